"""The workbench database's schema, as named migrations applied once each and recorded in ``_migrations``.

A migration is never edited once released: a schema change is a new function here and a new entry at the end of
:data:`MIGRATIONS`. :class:`luthitune.store.Store` applies the pending ones, in this list's order, when it opens a
database.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def m001_runs(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "created_at": str,
            "updated_at": str,
            "status": str,
            "backend": str,
            "chat_model": str,
            "base_model": str,
            "config_json": str,
            "cycle": int,
            "note": str,
        },
        pk="id",
    )


def m002_messages(db: sqlite_utils.Database) -> None:
    # One row per transcript message; (run, cycle, seq) identifies it.
    db["messages"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "seq": int,
            "role": str,
            "content": str,
            "template_hash": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["messages"].create_index(["run_id", "cycle", "seq"], unique=True)


def m003_consents(db: sqlite_utils.Database) -> None:
    db["consents"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "round": int,
            "decision": str,
            "reasons_json": str,
            "conditions_json": str,
            "raw": str,
            "template_hash": str,
            "reviewed_by": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )


def m004_constitutions(db: sqlite_utils.Database) -> None:
    db["constitution_versions"].create(
        {
            "id": str,
            "run_id": str,
            "version": int,
            "text": str,
            "principles_json": str,
            "hash": str,
            "parent_id": str,
            "author": str,
            "status": str,
            "approved_by": str,
            "approved_at": str,
            "feedback": str,
            "template_hash": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["constitution_versions"].create_index(["run_id", "version"], unique=True)


def m005_scenarios_pairs(db: sqlite_utils.Database) -> None:
    db["scenarios"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "idx": int,
            "category": str,
            "principle_id": str,
            "prompt": str,
            "status": str,
            "reasons_json": str,
            "raw": str,
            "template_hash": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["pairs"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "scenario_id": str,
            "prompt": str,
            "chosen": str,
            "rejected": str,
            "critique": str,
            "principle_ids_json": str,
            "status": str,
            "reasons_json": str,
            "raw": str,
            "template_hash": str,
            "constitution_id": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("scenario_id", "scenarios", "id")],
    )
    db["pairs"].create_index(["run_id", "cycle", "status"])


def m006_training_evaluation(db: sqlite_utils.Database) -> None:
    db["training_runs"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "adapter_name": str,
            "adapter_path": str,
            "status": str,
            "config_json": str,
            "metrics_json": str,
            "dataset_hash": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    db["training_steps"].create(
        {"training_id": str, "step": int, "metrics_json": str, "created_at": str},
        pk=("training_id", "step"),
        foreign_keys=[("training_id", "training_runs", "id")],
    )
    db["evaluations"].create(
        {
            "run_id": str,
            "cycle": int,
            "model": str,
            "metric": str,
            "value": float,
            "scorer": str,
            "details_json": str,
            "created_at": str,
        },
        pk=("run_id", "cycle", "model", "metric"),
    )


def m007_constitution_draft_key(db: sqlite_utils.Database) -> None:
    # Which draft round produced a version, so a re-run node finds its draft instead of writing another.
    db["constitution_versions"].add_column("draft_key", str)
    db["constitution_versions"].create_index(["draft_key"], unique=True)


def m008_pair_checks(db: sqlite_utils.Database) -> None:
    # Phase 2 data engine: the scenario's category and the stance it asks for, the judge's verdicts and
    # the human review, kept with each pair.
    for col in ("category", "stance", "checks_json", "reviewed_by"):
        db["pairs"].add_column(col, str)


def m010_generation_host(db: sqlite_utils.Database) -> None:
    # Which server produced a scenario or a pair (an ollama/openai base URL; several when generation is spread
    # over hosts). NULL on the in-process local backend.
    for table in ("scenarios", "pairs"):
        db[table].add_column("host", str)


def m009_model_identity(db: sqlite_utils.Database) -> None:
    # One model throughout (luthitune.identity): the identity of the model each run talks to and of the weights
    # it trains, whether they are the same, and whether the configuration allowed a mismatch; which model each
    # later step talked to (base digest + adapter hash); and the Ollama models `export ollama` wrote.
    for col, kind in (
        ("chat_identity_json", str),
        ("train_identity_json", str),
        ("identity_match", str),
        ("identity_reason", str),
        ("allow_mismatch", int),
    ):
        db["runs"].add_column(col, kind)
    db["run_models"].create(
        {
            "run_id": str,
            "cycle": int,
            "step": str,
            "model": str,
            "digest": str,
            "adapters_json": str,
            "identity_json": str,
            "created_at": str,
        },
        pk=("run_id", "cycle", "step"),
    )
    db["model_exports"].create(
        {
            "name": str,
            "mode": str,
            "run_id": str,
            "cycle": int,
            "adapter_path": str,
            "adapter_sha256": str,
            "base_digest": str,
            "identity_json": str,
            "folder": str,
            "modelfile": str,
            "ollama_url": str,
            "created": int,
            "created_at": str,
        },
        pk="name",
    )


def m011_evaluation_and_revision(db: sqlite_utils.Database) -> None:
    # Every probe answer of an evaluation, with its rule-based checks and the judge's verdict: each number in the
    # evaluations table can be traced to the answers it counts. (run, cycle, model, probe) identifies one.
    db["probe_answers"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "model": str,
            "probe_id": str,
            "probe_set": str,
            "prompt": str,
            "answer": str,
            "checks_json": str,
            "judge_json": str,
            "created_at": str,
        },
        pk="id",
    )
    db["probe_answers"].create_index(["run_id", "cycle", "model"])
    # A revised constitution records the model that proposed it (base + adapter) and the consent it was given.
    db["constitution_versions"].add_column("model_json", str)
    db["constitution_versions"].add_column("consent_id", str)


def m012_meaning_checks(db: sqlite_utils.Database) -> None:
    # Every answer of the model's that failed a check (its schema or its meaning), with its raw text and the named
    # reasons: step (draft, consent, ratify, revision, amendment, scenario, pair), the item it was for and which
    # attempt it was. (item, attempt) identifies one: a re-run node writes the same rows.
    db["attempts"].create(
        {
            "id": str,
            "run_id": str,
            "cycle": int,
            "step": str,
            "item_id": str,
            "attempt": int,
            "raw": str,
            "reasons_json": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["attempts"].create_index(["run_id", "cycle", "step"])
    # A consent record's checks (why an answer was recorded as unclear) and how many answers it took.
    db["consents"].add_column("checks_json", str)
    db["consents"].add_column("attempts", int)
    # Every measured number carries its sample size and 95% interval; "change" rows hold base -> adapter changes.
    for col, kind in (("n", int), ("lo", float), ("hi", float)):
        db["evaluations"].add_column(col, kind)


def m013_scenario_topic(db: sqlite_utils.Database) -> None:
    # The topic a scenario's request was seeded with (prompts/categories.yaml): whether the model wrote about it is
    # measured (luthitune.meaning.on_topic), and shown with the dataset's stats and the evaluation report.
    db["scenarios"].add_column("topic", str)


def m014_scenario_author(db: sqlite_utils.Database) -> None:
    # Who wrote a scenario's request: NULL for the model, "facilitator (template)" for a category's facilitator
    # request used after the model's own failed its checks (prompts/categories.yaml, facilitator_requests).
    db["scenarios"].add_column("author", str)


# The order migrations are applied in. It is this list, not the names: m010 was released before m009 (two branches
# merged in that order), so databases exist with m010 applied and m009 not yet; both touch different columns, and
# each is applied once by name whatever the order it meets them in.
MIGRATIONS: list[tuple[str, Migration]] = [
    ("m001_runs", m001_runs),
    ("m002_messages", m002_messages),
    ("m003_consents", m003_consents),
    ("m004_constitutions", m004_constitutions),
    ("m005_scenarios_pairs", m005_scenarios_pairs),
    ("m006_training_evaluation", m006_training_evaluation),
    ("m007_constitution_draft_key", m007_constitution_draft_key),
    ("m008_pair_checks", m008_pair_checks),
    ("m010_generation_host", m010_generation_host),
    ("m009_model_identity", m009_model_identity),
    ("m011_evaluation_and_revision", m011_evaluation_and_revision),
    ("m012_meaning_checks", m012_meaning_checks),
    ("m013_scenario_topic", m013_scenario_topic),
    ("m014_scenario_author", m014_scenario_author),
]
