"""The options a facilitator chooses when starting a run: one definition, with each option's default, bounds and
help text, from which the CLI's ``luthitune run`` flags, the web UI's "New run" form, the demo and the graph's
:class:`~luthitune.graph.state.Context` defaults are all built.

An option left unset (None) takes the workspace's value when the run starts (``practice.scenarios``,
``practice.judge``...). Adding an option here and to ``Context`` is all it takes for every client to offer it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from luthitune.errors import UsageError


class RunOptions(BaseModel):
    """What ``luthitune run``, the web UI and the demo may set when a run starts (the rest of a run's settings
    come from the workspace's configuration and a recipe)."""

    model_config = ConfigDict(extra="forbid")

    autopilot: bool = Field(False, description="Answer every approval point from configuration.")
    n_scenarios: int | None = Field(
        None, ge=1, title="Scenarios per cycle", description="Scenarios per cycle (default: practice.scenarios)."
    )
    judge: bool | None = Field(
        None, title="Judge pass", description="Judge pass on every pair (default: practice.judge)."
    )
    max_cycles: int = Field(1, ge=1, title="Cycles", description="Protocol cycles (each ends with a revision).")
    interview_turns: int = Field(3, ge=1, title="Interview turns", description="Interview questions on autopilot.")
    max_consent_rounds: int = Field(
        2, ge=1, title="Consent rounds", description="Times to ask for consent before ending."
    )
    max_draft_rounds: int = Field(3, ge=1, title="Draft rounds", description="Constitution drafts before giving up.")
    starter_constitution: bool = Field(
        False,
        title="Starter constitution",
        description="On autopilot, when the model's drafts fail the principle checks, use the packaged starter "
        "constitution (recorded as the facilitator's) for the model to ratify, instead of ending the run.",
    )
    train_processes: int | None = Field(
        None,
        ge=1,
        title="Training processes",
        description="Train under `accelerate launch` with this many processes (DDP over GPUs, gloo on the CPU); "
        "kept with the run, so `resume` trains the same way. Default 1: in-process.",
    )

    @classmethod
    def of(cls, **values: Any) -> RunOptions:
        """Options from a client's form or flags; a value out of bounds is a :class:`UsageError` naming the option
        by its title."""
        try:
            return cls(**values)
        except ValidationError as exc:
            lines = [
                f"{cls.model_fields[str(e['loc'][0])].title or e['loc'][0]}: {e['msg']} (got {e.get('input')!r})"
                if e["loc"] and str(e["loc"][0]) in cls.model_fields
                else e["msg"]
                for e in exc.errors()
            ]
            raise UsageError("Invalid run options: " + "; ".join(lines) + ".") from None

    def settings(self) -> dict[str, Any]:
        """The options that were set, as a run's settings (``Protocol.start``): unset ones leave the workspace's."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def default(name: str) -> Any:
    """An option's default."""
    return RunOptions.model_fields[name].default


def help_text(name: str) -> str:
    """An option's help text (CLI ``--help``, the web UI's field info)."""
    return RunOptions.model_fields[name].description or ""


def label(name: str) -> str:
    return RunOptions.model_fields[name].title or name


def minimum(name: str) -> int | None:
    """An option's lower bound, if it has one."""
    for m in RunOptions.model_fields[name].metadata:
        if hasattr(m, "ge"):
            return m.ge
    return None
