"""Constitutions: numbered principles rendered as markdown, parsed back after a human edit, hashed."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from luthitune.errors import LuthiTuneError
from luthitune.store import sha256

_LINE = re.compile(r"^\s*\*\*(P\d+)\.\s*(.+?)\*\*\s*[—:-]+\s*(.+?)\s*$")
_WHY = re.compile(r"^\s*_?Rationale:?_?\s*(.+?)_?\s*$", re.IGNORECASE)


@dataclass
class P:
    id: str
    title: str
    text: str
    rationale: str = ""


def render(principles: list[P], version: int) -> str:
    lines = [f"# Constitution v{version}", ""]
    for p in principles:
        lines.append(f"**{p.id}. {p.title}** — {p.text}")
        if p.rationale:
            lines.append(f"  _Rationale: {p.rationale}_")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def parse(text: str) -> list[P]:
    """Principles from constitution markdown (``**P1. Title** — text`` lines, optional rationale line)."""
    out: list[P] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(P(m.group(1), m.group(2).strip(), m.group(3).strip()))
            continue
        w = _WHY.match(line)
        if w and out and not out[-1].rationale:
            out[-1].rationale = w.group(1).strip().rstrip("_")
    if not out:
        raise LuthiTuneError(
            "No principles found in the constitution text. Each principle needs its own line like "
            "`**P1. Title** — what I choose to do`."
        )
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise LuthiTuneError(f"Principle ids must be unique; found {ids}.")
    return out


def to_json(principles: list[P]) -> list[dict]:
    return [asdict(p) for p in principles]


def from_json(rows: list[dict]) -> list[P]:
    return [P(**r) for r in rows]


def text_hash(text: str) -> str:
    return sha256(text.strip() + "\n")


def diff(old: str, new: str, old_label: str = "old", new_label: str = "new") -> list[str]:
    """Unified diff lines from one constitution text to another (empty when they are the same)."""
    import difflib

    return list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_label, new_label, lineterm=""))


def summary(principles: list[P]) -> str:
    """Compact form for prompts."""
    return "\n".join(f"{p.id} {p.title}: {p.text}" for p in principles)


_ID = re.compile(r"\bP(\d{1,2})\b")


def cited_ids(text: str) -> list[str]:
    """Principle ids (P1, P2...) mentioned in ``text``, in order, without repeats."""
    seen: list[str] = []
    for m in _ID.finditer(text):
        pid = f"P{int(m.group(1))}"
        if pid not in seen:
            seen.append(pid)
    return seen


def check(principles: list[P], *, by_model: bool = False) -> list[str]:
    """Why these principles are not a usable constitution (each reason names its principle); empty when every
    principle passes :func:`luthitune.meaning.principle_reasons` and none repeats another. A facilitator's text
    (``by_model=False``) may leave out rationales."""
    from luthitune.meaning import principle_reasons

    out: list[str] = []
    ids = [p.id for p in principles]
    for i, p in enumerate(principles):
        others = [(o.id, o.title, o.text) for o in principles[:i]]
        reasons = principle_reasons(p.title, p.text, p.rationale, ids=ids, others=others, rationale_required=by_model)
        out += [f"{p.id}: {r}" for r in reasons]
    return out


def write_markdown(data_dir: Path, text: str) -> None:
    """The constitution in force, as ``data/constitution.md`` (written whole or not at all)."""
    path = data_dir / "constitution.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def edit_problems(text: str) -> list[str]:
    """Why a facilitator's edited text cannot be used: no principles, or principles that fail the checks."""
    try:
        return check(parse(text or ""))
    except Exception as exc:  # text without principles: say so, ask again
        return [str(exc)]
