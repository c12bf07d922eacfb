"""Structured-output schemas. Kept flat (no ``$defs``, no ``pattern``) so Ollama's JSON-schema
``format`` accepts them, and every string has a ``max_length`` so constrained decoding closes it."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _not_blank(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("must not be empty or whitespace")
    return v


def Text(max_length: int, description: str = ""):
    return Annotated[str, Field(min_length=1, max_length=max_length, description=description),
                     AfterValidator(_not_blank)]


class ScenarioPair(BaseModel):
    """One practice scenario: the request, the impulsive answer, the critique and the refined answer."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text(300, "The user's request, in the user's voice")
    rejected: Text(400, "The first, impulsive answer")
    critique: Text(400, "Why the first answer falls short, naming the principles")
    chosen: Text(500, "The refined answer that explains its choice")
