"""Names that become part of a path: runs, forks, adapters, exports, Ollama models.

Every such name is checked where it enters (the CLI, the web UI, the graph's input) by :func:`check_name`, and every
path built from one goes through :func:`inside`, which refuses a path that would leave its folder. A name from a
workspace's database is untrusted too: a run named ``../../x`` in a copied ``luthitune.db`` still cannot make an
export or an adapter land outside the workspace.
"""

from __future__ import annotations

import re
from pathlib import Path

from luthitune.errors import UsageError

MAX_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Ollama's own names: [namespace/]model[:tag], each part of the same characters.
_OLLAMA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9][A-Za-z0-9._-]*)?")
RULE = f"letters, digits, '.', '_' and '-', starting with a letter or a digit, at most {MAX_LENGTH} characters, no '..'"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 50 else f"{text[:40]}…' ({len(str(value))} characters)"


def is_name(value: object, *, ollama: bool = False) -> bool:
    if not isinstance(value, str) or len(value) > (2 * MAX_LENGTH if ollama else MAX_LENGTH) or ".." in value:
        return False
    return bool((_OLLAMA if ollama else _NAME).fullmatch(value))


def check_name(value: object, what: str = "run name", *, ollama: bool = False) -> str:
    """``value`` when it is a safe name; else a :class:`UsageError` saying what a name may hold."""
    if is_name(value, ollama=ollama):
        return str(value)
    rule = RULE if not ollama else f"{RULE}; an Ollama name may add one '/namespace' and one ':tag'"
    raise UsageError(
        f"The {what} {_shown(value)} cannot be used: it becomes part of file and folder names in the workspace. "
        f"Use {rule}."
    )


def inside(root: Path, *parts: str) -> Path:
    """``root / parts``, refused unless it stays inside ``root`` (after resolving ``..`` and links)."""
    target = Path(root).joinpath(*parts)
    base = Path(root).resolve()
    resolved = target.resolve()
    if resolved != base and base not in resolved.parents:
        raise UsageError(
            f"Refusing to write {target}: it is outside {root}. A name that becomes a path must be {RULE}."
        )
    return target
