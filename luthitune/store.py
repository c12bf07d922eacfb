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
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
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


_COLUMN = re.compile(r"[a-z_][a-z0-9_]*\Z")
_OPS = {"": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def clause(where: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """A SQL condition from keyword filters, ANDed: ``cycle=2`` (None: ``is null``); ``cycle__le=2`` (also ``lt``,
    ``gt``, ``ge``); ``status__ne="x"`` (None: ``is not null``); ``status__in=(...)``, ``status__notin=(...)``;
    ``item_id__startswith="p"``. Values are always parameters; a name that is not a plain column is an error."""
    parts, args = [], []
    for key, value in where.items():
        col, _, op = key.partition("__")
        if not _COLUMN.match(col):
            raise ValueError(f"not a column name: {col!r}")
        if op in ("in", "notin"):
            values = list(value)
            marks = ", ".join("?" * len(values)) or "null"
            parts.append(f"[{col}] {'not in' if op == 'notin' else 'in'} ({marks})")
            args += values
        elif op == "startswith":
            parts.append(f"[{col}] like ? escape '\\'")
            args.append(str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        elif value is None and op in ("", "ne"):
            parts.append(f"[{col}] is {'not ' if op == 'ne' else ''}null")
        elif op in _OPS:
            parts.append(f"[{col}] {_OPS[op]} ?")
            args.append(value)
        else:
            raise ValueError(f"unknown filter {key!r}")
    return (" and ".join(parts) or None), args


# The tables that hold a run's artifacts (keyed by ``run_id``), and the column that dates each row: what a fork
# copies up to its checkpoint.
RUN_TABLES = [
    ("messages", "created_at"),
    ("consents", "created_at"),
    ("constitution_versions", "created_at"),
    ("scenarios", "created_at"),
    ("pairs", "created_at"),
    ("training_runs", "started_at"),
    ("evaluations", "created_at"),
    ("probe_answers", "created_at"),
    ("run_models", "created_at"),
    ("attempts", "created_at"),
]


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


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

    def rows(self, table: str, *, order_by: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """The rows of ``table`` that match ``where`` (see :func:`clause`), in ``order_by`` order."""
        sql, args = clause(where)
        return list(self.db[table].rows_where(sql, args, order_by=order_by))

    def count(self, table: str, **where: Any) -> int:
        sql, args = clause(where)
        return self.db.execute(f"select count(*) from [{table}]" + (f" where {sql}" if sql else ""), args).fetchone()[0]

    def delete(self, table: str, **where: Any) -> None:
        sql, args = clause(where)
        with self.writing(), self.db.conn:
            self.db.execute(f"delete from [{table}]" + (f" where {sql}" if sql else ""), args)

    def replace(self, table: str, rows: list[dict[str, Any]], pk: str | tuple[str, ...], **where: Any) -> None:
        """The rows matching ``where`` become ``rows``, in one transaction (a step's results written again)."""
        sql, args = clause(where)
        with self.writing(), self.db.conn:
            self.db.execute(f"delete from [{table}]" + (f" where {sql}" if sql else ""), args)
            if rows:
                self.db[table].insert_all(rows, pk=pk)

    def last_cycle(self, table: str, run_id: str) -> int | None:
        """The highest cycle of ``run_id`` with a row in ``table``; None when it has none."""
        row = self.db.execute(f"select max(cycle) from [{table}] where run_id = ?", [run_id]).fetchone()
        return None if row[0] is None else int(row[0])

    def newest_run(self, table: str, **where: Any) -> str | None:
        """The newest run (by creation) with a row in ``table`` matching ``where``; None when there is none."""
        sql, args = clause(where)
        cond = f" where {sql.replace('[', 't.[')}" if sql else ""  # the filters are on the table's columns
        row = self.db.execute(
            f"select t.run_id from [{table}] t join runs r on r.id = t.run_id{cond} order by r.created_at desc limit 1",
            args,
        ).fetchone()
        return row[0] if row else None

    # -- runs --

    def upsert_run(self, run_id: str, **fields: Any) -> None:
        existing = self.get("runs", run_id)
        row = {"id": run_id, "updated_at": now(), **fields}
        if existing is None:
            row.setdefault("created_at", now())
            row.setdefault("status", "created")
            row.setdefault("cycle", 0)
        self.upsert("runs", row)

    def copy_run(self, src: str, dst: str, *, until: datetime, rename: Callable[[dict], dict]) -> None:
        """The artifacts run ``src`` stored up to ``until``, copied to run ``dst`` (a fork) with ``rename`` applied to
        each row (its ids), in one transaction; a training run's steps go with it."""
        with self.writing(), self.db.conn:
            for table, when in RUN_TABLES:
                rows = [r for r in self.rows(table, run_id=src) if (t := _ts(r.get(when))) is not None and t <= until]
                self.db[table].insert_all([rename(r) for r in rows], replace=True)
                if table != "training_runs":
                    continue
                for r in rows:
                    steps = [
                        s for s in self.rows("training_steps", training_id=r["id"]) if _ts(s["created_at"]) <= until
                    ]
                    self.db["training_steps"].insert_all([rename(s) for s in steps], replace=True)

    @property
    def constitutions(self) -> Constitutions:
        return Constitutions(self)

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
            return self.rows("messages", run_id=run_id, order_by="cycle, seq")
        return self.rows("messages", run_id=run_id, cycle=cycle, order_by="seq")

    # -- consent --

    def conditions(self, run_id: str) -> list[str]:
        """The conditions the model set when it consented (consent, ratification, revision), in order, once each:
        what every later approval shows and every practice prompt keeps to."""
        rows = self.rows("consents", run_id=run_id, decision__in=("yes", "conditional"), order_by="created_at")
        return list(dict.fromkeys(r["conditions_json"].strip() for r in rows if r["conditions_json"]))

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
        where: dict[str, Any] = {"run_id": run_id}
        if step:
            where["step"] = step
        if item_prefix:
            where["item_id__startswith"] = item_prefix
        return self.rows("attempts", **where, order_by="cycle, item_id, attempt")

    def close(self) -> None:
        self.db.conn.close()


class Constitutions:
    """A run's constitution versions: each with its text, hash, parent and author. A version is written once, keyed
    by its draft key (the round that wrote it): a node re-run after a crash finds it instead of writing another."""

    TABLE = "constitution_versions"

    def __init__(self, store: Store):
        self.store = store

    def get(self, version_id: str) -> dict[str, Any] | None:
        return self.store.get(self.TABLE, version_id)

    def versions(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.rows(self.TABLE, run_id=run_id, order_by="version")

    def by_draft(self, draft_key: str) -> dict[str, Any] | None:
        found = self.store.rows(self.TABLE, draft_key=draft_key)
        return found[0] if found else None

    def save(
        self,
        run_id: str,
        principles: list,
        *,
        author: str,
        status: str,
        parent_id: str | None,
        draft_key: str,
        template_hash: str | None = None,
    ) -> dict[str, Any]:
        """A new version of ``run_id``'s constitution from ``principles`` (:class:`luthitune.constitution.P`), or the
        one already written under ``draft_key``."""
        from luthitune import constitution as C

        found = self.by_draft(draft_key)
        if found:  # written before a crash: the same draft, not a new version
            return found
        version = self.store.count(self.TABLE, run_id=run_id) + 1
        text = C.render(principles, version)
        row = {
            "id": f"{run_id}:v{version}",
            "run_id": run_id,
            "version": version,
            "text": text,
            "principles_json": C.to_json(principles),
            "hash": C.text_hash(text),
            "parent_id": parent_id,
            "author": author,
            "status": status,
            "template_hash": template_hash,
            "draft_key": draft_key,
            "created_at": now(),
        }
        self.store.upsert(self.TABLE, row)
        return self.get(row["id"])  # type: ignore[return-value]

    def supersede(self, row: dict[str, Any], text: str, *, author: str, status: str) -> dict[str, Any]:
        """A human's edit of version ``row`` (its full ``text``): a new version, its child, which supersedes it."""
        from luthitune import constitution as C

        edited = self.save(
            row["run_id"],
            C.parse(text),
            author=author,
            status=status,
            parent_id=row["id"],
            draft_key=f"{row['draft_key']}:edit",
        )
        self.update(row["id"], status="superseded")
        return edited

    def approve(self, version_id: str, *, by: str) -> None:
        self.update(version_id, status="approved", approved_by=by, approved_at=now())

    def update(self, version_id: str, **fields: Any) -> None:
        """A version's status, approval or consent fields."""
        self.store.upsert(self.TABLE, {"id": version_id, **fields})
