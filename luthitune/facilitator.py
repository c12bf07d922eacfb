"""What a facilitator can do with a run, shared by the CLI and the web UI so both act the same way.

The answer each pending approval takes, the checks before answering, changes to a run's settings while it
waits (autopilot, training settings), edits of the workspace's files, and a run's artifact counts. Nothing here
runs the graph: answers go to :meth:`luthitune.protocol.Protocol.advance`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import yaml

from luthitune import answers
from luthitune.config import Config
from luthitune.configfiles import load_model, parse_yaml, read_text
from luthitune.errors import LuthiTuneError, UsageError
from luthitune.store import Store, now
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.workspace import CONFIG_FILE, HYPERPARAMETERS_FILE, Workspace

# Interrupt types, by the answers each accepts (luthitune.answers): approve, reject (with feedback), edit (a draft,
# the trained model's proposed revision, or the facilitator's own text once the model's drafts failed).
APPROVABLE = answers.kinds_accepting(answers.Approve)
REJECTABLE = answers.kinds_accepting(answers.Reject)
EDITABLE = answers.kinds_accepting(answers.Edit)
PAIR_DECISIONS = answers.PAIR_DECISIONS


def expect(st: Any, expected: Iterable[str], hint: str = "") -> dict:
    """The pending interrupt of ``st`` (a ``RunStatus``), if it is one of ``expected``; else a clear error."""
    if st.status == "server":
        from luthitune.runs import server_note

        raise UsageError(f"Run {st.run_id} cannot be answered here. {server_note(st)}")
    if st.status != "waiting" or not st.interrupt:
        raise LuthiTuneError(f"Run {st.run_id} is not waiting for an answer (it is {st.status}).")
    kind = st.interrupt["type"]
    if kind not in set(expected):
        raise LuthiTuneError(f"Run {st.run_id} waits for {kind}; " + (hint or "answer that first."))
    return st.interrupt


def approve(by: str = "human") -> dict:
    return answers.Approve(action="approve", by=by).model_dump()


def reject(feedback: str = "", by: str = "human") -> dict:
    """Reject the pending approval; a rejected constitution draft is redrafted with ``feedback``."""
    return answers.Reject(action="reject", feedback=feedback, by=by).model_dump()


def drop_pairs(pair_ids: Iterable[str], by: str = "human") -> dict:
    """In a pair review: drop these pairs, accept the rest of the sample."""
    ids = list(pair_ids)
    if not ids:
        raise UsageError("Name at least one pair to reject, or approve the review to accept them all.")
    return answers.DropPairs(action="reject", pairs=ids, by=by).model_dump()


def review_pairs(decisions: dict[str, str], sample: list[dict], by: str = "human") -> dict:
    """In a pair review: a decision (accept / reject) for each sampled pair."""
    ids = [p["id"] for p in sample]
    unknown = sorted(set(decisions) - set(ids))
    if unknown:
        raise UsageError(f"Pairs {unknown} are not in the review sample: {ids}.")
    bad = {k: v for k, v in decisions.items() if v not in PAIR_DECISIONS}
    if bad:
        raise UsageError(f"Decisions must be accept or reject; got {bad}.")
    return answers.PairDecisions(decisions={i: decisions.get(i, "accept") for i in ids}, by=by).model_dump()


def edit(text: str | None, current: str, by: str = "human") -> dict | None:
    """The answer for an edited constitution draft, or None when nothing changed. Fails with a clear message on
    text without principles, or principles that fail the checks of their meaning, before anything reaches the
    graph."""
    from luthitune import constitution as C

    if text is None or text.strip() == current.strip():
        return None
    problems = C.check(C.parse(text))
    if problems:
        raise UsageError("The edited constitution cannot be used: " + "; ".join(problems))
    return answers.Edit(action="edit", text=text, by=by).model_dump()


def write(text: str | None, by: str = "human") -> dict:
    """The facilitator's own constitution, once the model's drafts were not usable (``constitution_write``); the
    model is then asked to ratify it. The text is checked as an edit is."""
    answer = edit(text, "", by)
    if answer is None:
        raise UsageError("Write the constitution's text: principles as `**P1. Title** — what I choose to do`.")
    return answer


def counts(store: Store, run_id: str) -> dict[str, int]:
    """What a run has stored: transcript messages, consent records, constitution versions, pairs kept / quarantined."""
    out = {t: store.count(t, run_id=run_id) for t in ("messages", "consents", "constitution_versions")}
    out["pairs kept"] = store.count("pairs", run_id=run_id, status="kept")
    out["pairs quarantined"] = store.count("pairs", run_id=run_id, status="quarantined")
    return out


# -- a run's settings --

MUTABLE = ("autopilot", "review_sample", "train")  # what may change while a run waits (recorded in its config)


def update_settings(p: Any, run_id: str, by: str = "human", **changes: Any) -> dict:
    """Change settings of ``run_id`` (a ``Protocol``'s run): ``autopilot``, ``review_sample``, or ``train`` (training
    overrides by short name or hyperparameters.yaml section, validated; the effective values are stored, as at
    start). The next ``advance`` uses them. Each change is recorded in the run's config. Returns the new context."""
    from luthitune.graph.state import Context

    unknown = sorted(set(changes) - set(MUTABLE))
    if unknown:
        raise UsageError(f"Settings {unknown} cannot change during a run; these can: {', '.join(MUTABLE)}.")
    row = p.run_row(run_id)
    config = json.loads(row["config_json"])
    ctx = dict(config["context"])
    if changes.get("train"):
        ctx["train"] = effective_training(ctx.get("train"), changes["train"])
    for key in ("autopilot", "review_sample"):
        if key in changes and changes[key] is not None:
            ctx[key] = changes[key]
    Context.from_settings({**ctx, "workspace": str(p.ws.root)})  # it must still make a context
    config["context"] = ctx
    config.setdefault("changes", []).append({"at": now(), "by": by, "changes": changes})
    p.store.upsert_run(run_id, config_json=json.dumps(config))
    return ctx


def effective_training(current: dict | None, overrides: dict) -> dict:
    """A run's stored training settings with ``overrides`` applied, validated (errors name the field)."""
    from luthitune.training.config import merge

    return merge(merge(Hyperparameters(), current), overrides).model_dump(mode="json")


# -- the workspace's files --


def validate_hyperparameters(ws: Workspace, text: str) -> Hyperparameters:
    path = ws.root / HYPERPARAMETERS_FILE
    return load_model(Hyperparameters, path, parse_yaml(text, path))


def save_hyperparameters(ws: Workspace, text: str) -> Hyperparameters:
    """Validate and write ``config/hyperparameters.yaml`` (atomically); it sets the training defaults of new runs."""
    from luthitune.dataset import write_atomic

    hp = validate_hyperparameters(ws, text)
    write_atomic(ws.root / HYPERPARAMETERS_FILE, text)
    return hp


def hyperparameters_text(ws: Workspace) -> str:
    from luthitune.training.hyperparameters import default_hyperparameters_yaml

    path = ws.root / HYPERPARAMETERS_FILE
    return read_text(path) if path.exists() else default_hyperparameters_yaml()


_TOP_KEY = re.compile(r"^(?P<key>[A-Za-z_]+):(?P<value>[^#\n]*)(?P<comment>#.*)?$", re.MULTILINE)


def set_config(ws: Workspace, **values: str) -> Workspace:
    """Set top-level scalar keys of ``luthitune.yaml`` (e.g. backend, chat_model, base_model), keeping the file's
    comments and other keys; the result is validated before it is written. Returns the reopened workspace."""
    from luthitune.dataset import write_atomic

    nested = sorted(k for k, v in values.items() if isinstance(v, dict | list))
    if nested:
        raise UsageError(f"set_config sets single values; edit {CONFIG_FILE} for {', '.join(nested)}.")
    path = ws.root / CONFIG_FILE
    text = read_text(path) if path.exists() else ""
    data = {**parse_yaml(text, path), **values}
    load_model(Config, path, data)
    for key, value in values.items():
        line = f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        found = [m for m in _TOP_KEY.finditer(text) if m.group("key") == key]
        if found:
            m = found[0]
            comment = f"  {m.group('comment')}" if m.group("comment") else ""
            text = text[: m.start()] + line + comment + text[m.end() :]
        else:
            text = text.rstrip("\n") + ("\n" if text else "") + line + "\n"
    write_atomic(path, text)
    from luthitune.nodes import services

    services.forget_workspace()  # nodes that opened the workspace themselves (LangGraph's server): read it again
    return Workspace.open(ws.root)
