"""Prompt templates (``*.md`` beside this file), loaded with importlib.resources.

Templates use ``$name`` / ``${name}`` placeholders (``string.Template``), so JSON braces in a prompt
need no escaping. A missing variable raises :class:`TemplateError` naming it. Every rendered prompt
carries the SHA-256 of its template, stored on each row it produced.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources


class TemplateError(KeyError):
    pass


@dataclass(frozen=True)
class Rendered:
    name: str
    text: str
    template_hash: str


@cache
def load_text(name: str) -> str:
    try:
        return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TemplateError(f"No prompt template named {name!r} in luthitune.prompts") from exc


def template_hash(name: str) -> str:
    return hashlib.sha256(load_text(name).encode("utf-8")).hexdigest()


def available() -> list[str]:
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".md"))


@cache
def fixed_text(name: str) -> str:
    """Template ``name``'s own wording without its variables: what the model is told, not what it is given. The
    meaning checks refuse an answer that writes this back (:func:`luthitune.meaning.rule_copied`)."""
    return string.Template.pattern.sub(" ", load_text(name))


def render(name: str, **variables: object) -> Rendered:
    """Fill template ``name``; every placeholder must be given, or :class:`TemplateError` is raised."""
    template = string.Template(load_text(name))
    try:
        text = template.substitute({k: str(v) for k, v in variables.items()})
    except KeyError as exc:
        raise TemplateError(f"Prompt template {name!r} needs the variable {exc.args[0]!r}") from None
    except ValueError as exc:
        raise TemplateError(f"Prompt template {name!r} is malformed: {exc}") from None
    return Rendered(name=name, text=text.strip(), template_hash=template_hash(name))
