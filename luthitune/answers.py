"""The answers each approval point accepts, as JSON Schema: one place, read by every client.

Every interrupt the graph raises carries the schema of the value it resumes with, twice: as LangGraph's own
``response_schema`` (LangGraph Studio renders a typed form from it) and in the payload's ``answers`` field (for any
client that reads only the payload: langgraph-sdk's thread state, the CLI's checkpoint). Each accepted form says in
its ``description`` what it does. The CLI and the web UI build these values with :mod:`luthitune.facilitator`.
"""

from __future__ import annotations

from typing import Any

BY = {"type": "string", "description": "Who answered, as the records say it (default: human)."}


def _answer(action: str, does: str, **fields: dict[str, Any]) -> dict[str, Any]:
    """One accepted form: ``{"action": action, **fields}``, every field required."""
    return {
        "type": "object",
        "title": action,
        "description": does,
        "properties": {"action": {"const": action}, **fields, "by": BY},
        "required": ["action", *fields],
    }


TEXT = {"type": "string", "description": "The constitution's full text: principles as `**P1. Title** — what I do`."}

ACCEPTS: dict[str, list[dict[str, Any]]] = {
    "consent_review": [
        _answer(
            "approve",
            "Yes or conditional: the run continues (you accept the model's conditions, which the practice then keeps "
            "to). No or unclear, which is never consent: back to the interview, and the model is asked again later.",
        ),
        _answer("reject", "The run ends here."),
    ],
    "constitution_review": [
        _answer("approve", "The model is asked to ratify this draft; once it does, practice starts from it."),
        _answer(
            "edit",
            "Replace the draft with this text (it must pass the principle checks, else it is asked for again); the "
            "model is then asked to ratify it.",
            text=TEXT,
        ),
        _answer(
            "reject",
            "The model redrafts, told this feedback; when no draft round is left the facilitator is asked to write "
            "the constitution (or the run ends on autopilot).",
            feedback={"type": "string", "description": "Why, for the redraft."},
        ),
    ],
    "constitution_write": [
        _answer(
            "edit",
            "Your constitution (the payload's text is a starter to edit); it must pass the principle checks, and "
            "the model is then asked to ratify it.",
            text=TEXT,
        ),
        _answer("reject", "The run ends without a constitution."),
    ],
    "pair_review": [
        _answer("approve", "Every sampled pair is kept: training goes on with all kept pairs."),
        _answer(
            "reject",
            "These pairs are quarantined as rejected by the facilitator; the rest of the sample is kept.",
            pairs={"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Pair ids."},
        ),
        {
            "type": "object",
            "title": "decisions",
            "description": "A decision for each sampled pair (a pair left out is accepted).",
            "properties": {
                "decisions": {"type": "object", "additionalProperties": {"enum": ["accept", "reject"]}},
                "by": BY,
            },
            "required": ["decisions"],
        },
    ],
    "confirm_training": [
        _answer("approve", "DPO training starts with the run's settings (the payload's `settings`)."),
        _answer("reject", "The run ends without training."),
    ],
    "revision_review": [
        _answer("approve", "The amended constitution is in force from the next cycle."),
        _answer(
            "edit",
            "This text instead (it must pass the principle checks); the trained model is asked to consent to it, "
            "and it is in force from the next cycle if it does.",
            text=TEXT,
        ),
        _answer("reject", "The current constitution stays in force."),
    ],
}


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of the value that answers an interrupt of type ``kind``."""
    if kind == "interview":
        return {
            "type": "string",
            "title": "message",
            "description": "Your next message to the model; `/done` (or an empty message) ends the interview, and "
            "the consent question follows.",
        }
    if kind not in ACCEPTS:
        raise KeyError(f"No accepted answers are described for interrupts of type {kind!r}.")
    return {"title": kind, "oneOf": ACCEPTS[kind]}
