"""The approval points as types: each question a run asks, and the answers each one accepts.

A node asks a :class:`Question` (one pydantic model per approval point, with its ``kind`` and ``hint``) through
:func:`luthitune.nodes.services.ask`; the answer comes back parsed into one of the :class:`Answer` models that
question accepts. An answer that fits none of them is refused with a message listing the answers accepted: before
the graph runs when it comes through :meth:`luthitune.protocol.Protocol.advance` (the CLI, the web UI), and by
asking again with that message (the payload's ``refused``) when it comes from LangGraph's server or Studio.

Every interrupt carries the JSON Schema of the answers, built from these models, twice: as LangGraph's own
``response_schema`` (LangGraph Studio renders a typed form from it) and in the payload's ``answers`` field (for any
client that reads only the payload). Each accepted form says in its ``description`` what it does. The CLI and the
web UI build these values with :mod:`luthitune.facilitator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from luthitune.errors import UsageError

BY = "Who answered, as the records say it (default: human)."
TEXT = "The constitution's full text: principles as `**P1. Title** — what I do`."


# -- answers --


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field("human", description=BY)


class Approve(Answer):
    action: Literal["approve"]


class Reject(Answer):
    action: Literal["reject"]
    feedback: str = Field("", description="Why, for the redraft.")


class Edit(Answer):
    action: Literal["edit"]
    text: str = Field(description=TEXT)


class DropPairs(Answer):
    action: Literal["reject"]
    pairs: list[str] = Field(min_length=1, description="Pair ids.")


class PairDecisions(Answer):
    decisions: dict[str, Literal["accept", "reject"]]


@dataclass(frozen=True)
class Form:
    """One answer a question accepts, and what it does there."""

    model: type[Answer]
    does: str

    @property
    def name(self) -> str:
        field = self.model.model_fields.get("action")
        return field.annotation.__args__[0] if field else "decisions"  # type: ignore[union-attr]

    def schema(self) -> dict[str, Any]:
        s = self.model.model_json_schema()
        s.pop("title", None)
        return {"type": "object", "title": self.name, "description": self.does, **s}


ACCEPTS: dict[str, list[Form]] = {
    "consent_review": [
        Form(
            Approve,
            "Yes or conditional: the run continues (you accept the model's conditions, which the practice then keeps "
            "to). No or unclear, which is never consent: back to the interview, and the model is asked again later.",
        ),
        Form(Reject, "The run ends here."),
    ],
    "constitution_review": [
        Form(Approve, "The model is asked to ratify this draft; once it does, practice starts from it."),
        Form(
            Edit,
            "Replace the draft with this text (it must pass the principle checks, else it is asked for again); the "
            "model is then asked to ratify it.",
        ),
        Form(
            Reject,
            "The model redrafts, told this feedback; when no draft round is left the facilitator is asked to write "
            "the constitution (or the run ends on autopilot).",
        ),
    ],
    "constitution_write": [
        Form(
            Edit,
            "Your constitution (the payload's text is a starter to edit); it must pass the principle checks, and "
            "the model is then asked to ratify it.",
        ),
        Form(Reject, "The run ends without a constitution."),
    ],
    "pair_review": [
        Form(Approve, "Every sampled pair is kept: training goes on with all kept pairs."),
        Form(DropPairs, "These pairs are quarantined as rejected by the facilitator; the rest of the sample is kept."),
        Form(PairDecisions, "A decision for each sampled pair (a pair left out is accepted)."),
    ],
    "confirm_training": [
        Form(Approve, "DPO training starts with the run's settings (the payload's `settings`)."),
        Form(Reject, "The run ends without training."),
    ],
    "revision_review": [
        Form(Approve, "The amended constitution is in force from the next cycle."),
        Form(
            Edit,
            "This text instead (it must pass the principle checks); the trained model is asked to consent to it, "
            "and it is in force from the next cycle if it does.",
        ),
        Form(Reject, "The current constitution stays in force."),
    ],
}

PAIR_DECISIONS = ("accept", "reject")


def kinds_accepting(model: type[Answer]) -> tuple[str, ...]:
    """The approval points that accept an answer of type ``model``."""
    return tuple(kind for kind, forms in ACCEPTS.items() if any(f.model is model for f in forms))


INTERVIEW_SCHEMA = {
    "type": "string",
    "title": "message",
    "description": "Your next message to the model; `/done` (or an empty message) ends the interview, and the "
    "consent question follows.",
}


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of the value that answers an interrupt of type ``kind``."""
    if kind == "interview":
        return INTERVIEW_SCHEMA
    if kind not in ACCEPTS:
        raise KeyError(f"No accepted answers are described for interrupts of type {kind!r}.")
    return {"title": kind, "oneOf": [f.schema() for f in ACCEPTS[kind]]}


class AnswerRefused(UsageError):
    """An answer that fits none of the forms its question accepts."""


def accepted(kind: str) -> str:
    """The answers ``kind`` accepts, in one line: each form's name and the fields it needs."""
    if kind == "interview":
        return "a message (text), or /done"
    parts = []
    for f in ACCEPTS[kind]:
        needs = [n for n, fi in f.model.model_fields.items() if fi.is_required() and n != "action"]
        parts.append(f.name + (f" (with {', '.join(needs)})" if needs else ""))
    return ", ".join(parts)


def parse(kind: str, value: Any) -> Answer | str:
    """``value`` as the answer it is to a question of type ``kind``: the interview's message (a string), else the
    first form it fits. A bare string is taken as a form's action (``"approve"``). Anything else is refused with
    an :class:`AnswerRefused` that lists the answers accepted; nothing is guessed (a misspelt ``aprove`` neither
    approves nor rejects)."""
    if kind == "interview":
        if isinstance(value, str):
            return value
        raise AnswerRefused(f"An interview takes {accepted(kind)}; got {_shown(value)}.")
    if kind not in ACCEPTS:
        raise UsageError(f"No approval point of type {kind!r} is known.")
    data = {"action": value.strip()} if isinstance(value, str) else value
    if isinstance(data, dict):
        for form in ACCEPTS[kind]:
            try:
                return form.model.model_validate(data)
            except ValidationError:
                continue
    raise AnswerRefused(f"The {kind.replace('_', ' ')} takes {accepted(kind)}; got {_shown(value)}.")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


# -- questions --


class Question(BaseModel):
    """An approval point: what the facilitator is shown, and ``hint``, what each answer does."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]

    hint: str

    def payload(self) -> dict[str, Any]:
        """The interrupt's value: ``type`` (the kind), the question's fields, and the schema of its answers."""
        return {"type": self.kind, **self.model_dump(), "answers": schema(self.kind)}


class InterviewTurn(Question):
    kind: ClassVar[str] = "interview"
    turn: int
    last_reply: str


class ConsentReview(Question):
    kind: ClassVar[str] = "consent_review"
    consent_id: str
    decision: str
    reasons: Any
    conditions: Any
    checks: list[Any]


class ConstitutionReview(Question):
    kind: ClassVar[str] = "constitution_review"
    version_id: str
    version: int
    author: str
    text: str
    conditions: list[str]
    problems: list[str]


class ConstitutionWrite(Question):
    kind: ClassVar[str] = "constitution_write"
    why: str
    text: str
    problems: list[str]


class PairReview(Question):
    kind: ClassVar[str] = "pair_review"
    pairs: list[dict[str, Any]]
    conditions: list[str]


class ConfirmTraining(Question):
    kind: ClassVar[str] = "confirm_training"
    pairs: int
    held_out: int
    conditions: list[str]
    settings: dict[str, Any]


class RevisionReview(Question):
    kind: ClassVar[str] = "revision_review"
    version_id: str
    text: str
    parent_text: str
    diff: str
    amendments: Any
    conditions: list[str]
    problems: list[str]
