"""The workbench database (``data/luthitune.db``) through sqlite-utils.

Schema changes are named migrations (:mod:`luthitune.migrations`), applied once each and recorded in
``_migrations``. Every artifact
table has a deterministic primary key built from what identifies the item (run, cycle, index...), and all
writes are upserts: re-running a node after a crash updates rows instead of duplicating them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from luthitune import migrations
from luthitune.errors import WorkspaceError


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def json_list(value: Any) -> list:
    """A JSON list column (``reasons_json``, ``checks_json``...) as a list; NULL or empty is ``[]``."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else json.loads(value)


def sha256(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def read_only(path: Path) -> bool:
    """Whether the SQLite file ``path`` (or the folder it would be created in) cannot be written."""
    if path.exists():
        return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
    return path.parent.is_dir() and not os.access(path.parent, os.W_OK)


def connect(path: Path, *, timeout: float = 30) -> tuple[sqlite3.Connection, bool]:
    """A connection to the SQLite file ``path`` and whether it is read-only.

    A file on a read-only filesystem or without write permission is opened read-only, so reading commands work on
    a workspace that cannot be written (a mounted copy, another user's folder). A database in WAL mode whose ``-shm``
    file is gone can only be opened as immutable there, which is what a read-only folder guarantees anyway. A file
    that does not exist in a read-only folder is an empty database in memory (nothing was stored there).
    """
    if not read_only(path):
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(path), timeout=timeout, check_same_thread=False), False
    if not path.exists():  # nothing stored yet, and nothing can be: read an empty database
        return sqlite3.connect(":memory:", check_same_thread=False), True
    uri = "file:" + quote(str(path.resolve()))
    for mode in ("mode=ro", "immutable=1"):
        conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=timeout, check_same_thread=False)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
            return conn, True
        except sqlite3.OperationalError:
            conn.close()
    raise WorkspaceError(f"Cannot open {path} (read-only): check that it is a SQLite database and can be read.")


def storage_error(exc: BaseException, path: Path | str) -> WorkspaceError | None:
    """A failure to write the workspace (read-only, disk full, no permission) as one message naming ``path`` and
    what to do; None for any other failure."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        if "readonly" in text or "read-only" in text:
            why = "it is read-only"
        elif "disk is full" in text or "disk i/o" in text:
            why = "the disk is full (or failing)"
        elif "unable to open" in text:
            why = "it cannot be opened (a missing or unreadable folder?)"
        else:
            return None
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
        path = exc.filename or path
    elif isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "it is read-only" if exc.errno == errno.EROFS else "permission is denied"
        path = exc.filename or path
    else:
        return None
    return WorkspaceError(
        f"Cannot write {path}: {why}. Nothing already stored is lost. Free space or make the workspace writable "
        "(or copy it somewhere you can write), then run the command again; `luthitune resume RUN` continues a run "
        "from its last completed step. Reading commands (status, runs, history, provenance) work on a read-only "
        "workspace."
    )


class Store:
    """Thin, typed access to the workbench database. A database that cannot be written is opened read-only: reads
    work, and a write fails with a message that names the file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        memory = str(path) == ":memory:"
        try:
            if memory:
                conn, self.readonly = sqlite3.connect(":memory:", check_same_thread=False), False
            else:
                conn, self.readonly = connect(self.path)
            if not memory and not self.readonly:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, self.path) or WorkspaceError(f"Cannot open {self.path}: {exc}.") from None
        self.db = sqlite_utils.Database(conn)
        if not self.readonly or not self.path.exists():  # a missing file in a read-only folder: an empty schema
            with self.writing():
                self.migrate()
        if self.readonly:
            conn.execute("PRAGMA query_only = ON")  # a write fails with a message naming the file (writing())

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A write: a read-only file or a full disk becomes one message naming the database."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            err = storage_error(exc, self.path)
            if err is None:
                raise
            raise err from None

    # -- migrations --

    def applied_migrations(self) -> list[str]:
        if not self.db["_migrations"].exists():
            return []
        return [r["name"] for r in self.db["_migrations"].rows_where(order_by="applied_at, name")]

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied now."""
        if not self.db["_migrations"].exists():
            self.db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
        done = set(self.applied_migrations())
        applied = []
        for name, fn in migrations.MIGRATIONS:
            if name in done:
                continue
            with self.db.conn:
                fn(self.db)
                self.db["_migrations"].insert({"name": name, "applied_at": now()})
            applied.append(name)
        return applied

    # -- generic keyed writes --

    def upsert(self, table: str, row: dict[str, Any], pk: str | tuple[str, ...] = "id") -> None:
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
        with self.writing(), self.db.conn:
            self.db[table].upsert(row, pk=pk, alter=False)

    def upsert_all(self, table: str, rows: Iterable[dict[str, Any]], pk: str | tuple[str, ...] = "id") -> None:
        with self.writing(), self.db.conn:
            self.db[table].upsert_all(list(rows), pk=pk)

    def get(self, table: str, pk: Any) -> dict[str, Any] | None:
        try:
            return self.db[table].get(pk)
        except sqlite_utils.db.NotFoundError:
            return None

    def rows(self, table: str, where: str | None = None, args: Any = None, order_by: str | None = None):
        return list(self.db[table].rows_where(where, args or [], order_by=order_by))

    def count(self, table: str, where: str | None = None, args: Any = None) -> int:
        sql = f"select count(*) from [{table}]" + (f" where {where}" if where else "")
        return self.db.execute(sql, args or []).fetchone()[0]

    # -- runs --

    def upsert_run(self, run_id: str, **fields: Any) -> None:
        existing = self.get("runs", run_id)
        row = {"id": run_id, "updated_at": now(), **fields}
        if existing is None:
            row.setdefault("created_at", now())
            row.setdefault("status", "created")
            row.setdefault("cycle", 0)
        self.upsert("runs", row)

    # -- transcript --

    def add_message(
        self, run_id: str, cycle: int, seq: int, role: str, content: str, template_hash: str | None = None
    ) -> str:
        """Store one transcript message verbatim. (run, cycle, seq) identifies it: writing it again updates it."""
        msg_id = f"{run_id}:c{cycle}:m{seq:04d}"
        existing = self.get("messages", msg_id)
        self.upsert(
            "messages",
            {
                "id": msg_id,
                "run_id": run_id,
                "cycle": cycle,
                "seq": seq,
                "role": role,
                "content": content,
                "template_hash": template_hash,
                "created_at": existing["created_at"] if existing else now(),
            },
        )
        return msg_id

    def transcript(self, run_id: str, cycle: int | None = None) -> list[dict[str, Any]]:
        if cycle is None:
            return self.rows("messages", "run_id = ?", [run_id], order_by="cycle, seq")
        return self.rows("messages", "run_id = ? and cycle = ?", [run_id, cycle], order_by="seq")

    # -- consent --

    def conditions(self, run_id: str) -> list[str]:
        """The conditions the model set when it consented (consent, ratification, revision), in order, once each:
        what every later approval shows and every practice prompt keeps to."""
        rows = self.rows(
            "consents",
            "run_id = ? and decision in ('yes', 'conditional') and coalesce(conditions_json, '') != ''",
            [run_id],
            order_by="created_at",
        )
        return list(dict.fromkeys(r["conditions_json"].strip() for r in rows))

    # -- failed attempts (schema or meaning) --

    def record_attempt(
        self, run_id: str, cycle: int, step: str, item_id: str, attempt: int, raw: str, reasons: list[str]
    ) -> None:
        """Store one failed answer with its raw text and reasons; (item, attempt) identifies it."""
        self.upsert(
            "attempts",
            {
                "id": f"{item_id}:a{attempt}",
                "run_id": run_id,
                "cycle": cycle,
                "step": step,
                "item_id": item_id,
                "attempt": attempt,
                "raw": raw,
                "reasons_json": reasons,
                "created_at": now(),
            },
        )

    def attempts(self, run_id: str, step: str | None = None, item_prefix: str | None = None) -> list[dict[str, Any]]:
        where, args = "run_id = ?", [run_id]
        if step:
            where, args = where + " and step = ?", [*args, step]
        if item_prefix:
            where, args = where + " and item_id like ?", [*args, item_prefix.replace("%", "") + "%"]
        return self.rows("attempts", where, args, order_by="cycle, item_id, attempt")

    def close(self) -> None:
        self.db.conn.close()
