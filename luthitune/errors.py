"""Typed errors. Every user-facing failure carries a message that names what went wrong and what to do."""

from __future__ import annotations


class LuthiTuneError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero (``exit_code``)."""

    exit_code = 1


class ConfigError(LuthiTuneError):
    """A configuration file is missing, unreadable or has invalid fields."""

    exit_code = 2


class WorkspaceError(LuthiTuneError):
    """The workspace folder is missing or not a LuthiTune workspace."""

    exit_code = 2


class IdentityMismatch(ConfigError):
    """The model the run talks to is not the model it would train, and the configuration does not allow that."""


class BackendUnavailable(LuthiTuneError):
    """The model backend cannot be reached or the model is not present."""

    exit_code = 3


class EmbeddedModelMissing(BackendUnavailable):
    """The embedded SmolLM2 weights are not installed."""


class StructuredOutputError(LuthiTuneError):
    """The model did not produce a valid structured answer within the allowed retries.

    ``raw`` keeps the last raw text so callers can quarantine it instead of inventing a row.
    """

    exit_code = 4

    def __init__(self, schema_name: str, raw: str, errors: list[str]):
        self.schema_name = schema_name
        self.raw = raw
        self.errors = errors
        last = errors[-1] if errors else "no output"
        super().__init__(
            f"The model's answer did not match the {schema_name} schema after {len(errors)} attempt(s): {last}"
        )

    @property
    def reasons(self) -> list[str]:
        """The last attempt's failures, each a named reason (``structured_output: ...`` for a malformed answer)."""
        return [f"structured_output: {self.errors[-1] if self.errors else 'no output'}"]


class CheckFailed(StructuredOutputError):
    """The model's answers were well formed but failed the checks of their meaning (:mod:`luthitune.meaning`) in
    every allowed attempt. ``parsed`` is the last answer, kept for the record (never used as if it had passed)."""

    def __init__(self, schema_name: str, raw: str, errors: list[str], reasons: list[str], parsed=None):
        super().__init__(schema_name, raw, errors)
        self._reasons = list(reasons)
        self.parsed = parsed
        Exception.__init__(
            self,
            f"The model's {schema_name} answers failed the checks in {len(errors)} attempt(s): {'; '.join(reasons)}",
        )

    @property
    def reasons(self) -> list[str]:
        return self._reasons


class UsageError(LuthiTuneError):
    """The command asks for something that cannot be done as asked (a name already taken, a wrong state...)."""

    exit_code = 2


class NotResumable(UsageError):
    """A run that ``resume`` cannot continue; ``status`` (a ``RunStatus``) says where it stands."""

    def __init__(self, message: str, status: object):
        super().__init__(message)
        self.status = status


class RunFinished(NotResumable):
    """The run is done or ended: there is nothing to resume."""


class AnswerDue(NotResumable):
    """The run waits for a facilitator's answer: answering it, not resuming, continues the run."""


class RunElsewhere(NotResumable):
    """LangGraph's server holds the run's checkpoints: it is resumed there."""


class NotFound(UsageError):
    """A run, checkpoint, adapter or file the user named does not exist."""
