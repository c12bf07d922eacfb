"""The graph's state (small: ids, counters, versions, paths) and the per-run Context."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol

# typing_extensions' TypedDict, not typing's: pydantic (LangGraph's server builds the input and output schemas with
# it) refuses typing.TypedDict on Python < 3.12.
from typing_extensions import NotRequired, TypedDict

from luthitune.runoptions import default

Decision = Literal["yes", "no", "conditional", "unclear"]  # unclear: incoherent answers, not consent


def run_name(_old: str, new: str) -> str:
    """The ``run_id`` channel's reducer: every value written to it, the graph's input included (a caller such as
    LangGraph Studio may start the graph directly), must be a safe name, since it becomes part of paths."""
    from luthitune.names import check_name

    return check_name(new)


class RunInput(TypedDict):
    """What starts a run (the graph's input). A caller that gives no ``run_id`` (LangGraph Studio) gets the thread's
    id as the run's name; the run's settings come from the context."""

    run_id: NotRequired[Annotated[str, run_name]]


class RunState(TypedDict, total=False):
    run_id: Annotated[str, run_name]
    cycle: int  # 0-based protocol cycle
    msg_seq: int  # next transcript sequence number in this cycle
    turn: int  # facilitator turns so far in this cycle's interview
    interview_done: bool
    consent: Decision | None  # last consent decision
    consent_rounds: int  # consent checks so far in this cycle
    followup_round: int  # consent rounds whose "no" the interview has answered
    followup_turn: int
    draft_round: int  # constitution drafts so far (redrafts after reject / no ratification)
    draft_status: Literal["approved", "rejected", "pending"] | None
    constitution_id: str | None  # the approved version in force
    constitution_version: int  # its version number
    scenarios: int  # scenarios generated this cycle
    pairs_kept: int
    pairs_quarantined: int
    training_id: str | None
    adapter_path: str | None
    adapter_name: str | None
    evaluation: dict[str, float]  # this cycle's headline numbers
    revision: Literal["approved", "rejected", "declined", "none"] | None
    ended: str | None  # why the run ended early (no consent, human stop...), in one plain sentence
    ended_by: Literal["declined", "checks", "facilitator"] | None  # who ended it: the model, a failed check, a human


def default_workspace() -> str:
    """The workspace when the context names none: ``LUTHITUNE_HOME`` (LangGraph's server sets it from langgraph.json's
    ``env``), else the current directory, as for the CLI."""
    return os.path.abspath(os.environ.get("LUTHITUNE_HOME") or os.getcwd())


class Trainer(Protocol):
    """Trains the adapter ``name`` on preference ``pairs`` and returns its ``TrainResult`` (adapter path, metrics).
    The default is DPO on the workspace's weights (:mod:`luthitune.training`)."""

    def __call__(self, pairs: list[dict], name: str) -> Any: ...


class Evaluator(Protocol):
    """Measures the base model and ``adapter`` on held-out ``pairs`` (and the probes); returns the evaluation's
    ``Result`` rows, base and adapter and their changes. The default is :mod:`luthitune.evaluation`'s suite."""

    def __call__(self, pairs: list[dict], adapter: str) -> list: ...


class ChatModels(Protocol):
    """The chat model a node asks for: the base model (``adapter`` None), or the trained model, the adapter
    ``adapter`` (its files at ``adapter_path``) on the interviewed weights. The default is the workspace's backend
    (:func:`luthitune.nodes.services.llm`)."""

    def __call__(self, adapter: str | None, adapter_path: str | None) -> Any: ...


@dataclass(frozen=True)
class Seams:
    """Parts the nodes use instead of the workspace's own: the chat models (:class:`ChatModels`), a
    :class:`Trainer` and an :class:`Evaluator`. The nodes reach them through :mod:`luthitune.nodes.services`, which
    falls back to the real parts, so a node never knows which it has. Not settings: never stored, never part of the
    context schema a caller (LangGraph's server, Studio) sees.

    ``llm`` is the short form of ``chat`` for one model that answers every request, base or trained. ``ws`` and
    ``store`` are the caller's open workspace and store (a :class:`~luthitune.protocol.Protocol` passes its own):
    the nodes work on those, and open their own only when a caller passes none (LangGraph's server)."""

    llm: Any = None
    chat: ChatModels | None = None
    trainer: Trainer | None = None
    evaluator: Evaluator | None = None
    ws: Any = None
    store: Any = None

    def chat_model(self, adapter: str | None = None, adapter_path: str | None = None) -> Any:
        """The injected chat model for this request (None: use the workspace's own)."""
        return self.chat(adapter, adapter_path) if self.chat is not None else self.llm


NO_SEAMS = Seams()


@dataclass
class Context:
    """Per-run settings, passed with ``context=`` on every invocation (never global state).

    Every field is a setting a caller may give (LangGraph Studio shows them as the context form). The options a
    facilitator chooses at the start take their defaults from :class:`luthitune.runoptions.RunOptions`. Injected
    parts are not fields: :meth:`with_seams` attaches them, and the nodes read :attr:`seams`; left alone the nodes
    use the workspace's backend, :mod:`luthitune.training` and :mod:`luthitune.evaluation`.
    """

    workspace: str = field(default_factory=default_workspace)
    autopilot: bool = default("autopilot")
    interview_turns: int = default("interview_turns")
    max_consent_rounds: int = default("max_consent_rounds")
    max_draft_rounds: int = default("max_draft_rounds")
    n_principles: int = 3
    min_principles: int = 2  # a draft with fewer principles that pass the checks is not usable
    # When the model's drafts are not usable after max_draft_rounds: outside autopilot the facilitator is offered to
    # write the constitution; on autopilot, with this set, the packaged starter constitution is used (recorded as
    # the facilitator's), and the model is asked to ratify it either way.
    starter_constitution: bool = default("starter_constitution")
    deliberate_temperature: float = 0.3  # consent, principles, amendments (from sampling: in luthitune.yaml)
    # Phase 2 (defaults from the workspace's ``practice:`` section when the run starts)
    n_scenarios: int = 12
    category_mix: dict[str, float] = field(default_factory=dict)  # empty: every category, equal weight
    scenario_temperature: float = 0.9
    answer_temperature: float = 0.7
    pair_mode: str = "chain"  # chain: impulse, critique, revision as three plain-text steps; json: one answer
    dedup_threshold: float = 0.7
    judge: bool = False
    rules: list[str] | None = None  # validation rules; None: all
    review_sample: int = 5
    eval_fraction: float = 0.25
    seed: int = 0
    max_cycles: int = default("max_cycles")
    # Effective training hyperparameters (config/hyperparameters.yaml merged with the run's overrides, in its
    # sections: model, lora, training, dpo), fixed when the run starts so a resumed run trains the same way.
    train: dict[str, Any] = field(default_factory=dict)
    train_processes: int = 1  # >1: training runs under `accelerate launch` with this many processes
    evaluation: dict[str, Any] = field(default_factory=dict)  # luthitune.yaml's evaluation: section, fixed at start
    probes: dict[str, Any] | None = None  # the probe sets (packaged, with evaluation.probes' file over them), fixed

    @property
    def seams(self) -> Seams:
        return self.__dict__.get("_seams", NO_SEAMS)

    def with_seams(self, seams: Seams | None = None, **parts: Any) -> Context:
        """This context with injected parts (``llm=`` or ``chat=``, ``trainer=``, ``evaluator=``, or a whole
        :class:`Seams`)."""
        ctx = replace(self)
        ctx.__dict__["_seams"] = seams if seams is not None else Seams(**parts)
        return ctx

    def settings(self) -> dict[str, Any]:
        """The serialisable part, stored on the run so ``resume`` rebuilds the same context."""
        return asdict(self)

    def given(self) -> dict[str, Any]:
        """The settings that differ from the defaults, i.e. what a caller that built this context from a mapping
        (LangGraph's server) asked for; the workspace's configuration fills in the rest when the run starts."""
        defaults = Context(workspace=self.workspace).settings()
        return {k: v for k, v in self.settings().items() if k != "workspace" and v != defaults[k]}

    @classmethod
    def from_settings(cls, data: dict[str, Any], **inject: Any) -> Context:
        data = dict(data)
        if "categories" in data and "category_mix" not in data:  # runs started before category weights
            data["category_mix"] = dict.fromkeys(data["categories"], 1.0)
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        ctx = cls(**data)
        return ctx.with_seams(**inject) if inject else ctx

    def evaluation_config(self):
        from luthitune.config import EvaluationConfig

        return EvaluationConfig.model_validate(self.evaluation)

    def hyperparameters(self):
        """The run's training hyperparameters (validated)."""
        from luthitune.training.config import merge
        from luthitune.training.hyperparameters import Hyperparameters

        return merge(Hyperparameters(), self.train)
