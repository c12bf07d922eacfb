"""The practice dataset: selection, the train / held-out split, export with provenance, stats and quarantine.

Export writes TRL's conversational preference format (``prompt`` as messages, ``chosen`` / ``rejected`` as
assistant messages) as JSONL and as a ``datasets`` folder, plus the original tool's flat
``data/generated_dataset.jsonl``. Every file is written under a temporary name and renamed into place, so a
killed export leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from luthitune import meaning
from luthitune.errors import NotFound, UsageError
from luthitune.store import Store, now, sha256
from luthitune.workspace import Workspace

FORMAT = "trl-conversational-preference"


# -- selection and split --


def resolve(store: Store, run_id: str | None, cycle: int | None) -> tuple[str, int]:
    """The run and cycle meant: by default the newest run with pairs, and its newest cycle with pairs."""
    if run_id is None:
        newest = store.newest_run("pairs")
        if newest is None:
            raise NotFound(
                "There are no practice pairs in this workspace yet: run the protocol first (`luthitune run`)."
            )
        run_id = newest
    elif store.get("runs", run_id) is None:
        raise NotFound(f"No run named {run_id!r}; `luthitune runs` lists them.")
    if cycle is None:
        last = store.last_cycle("scenarios", run_id)
        if last is None:
            raise NotFound(f"Run {run_id} has no practice data yet.")
        cycle = last
    return run_id, cycle


def kept_pairs(store: Store, run_id: str, cycle: int) -> list[dict]:
    return store.rows("pairs", run_id=run_id, cycle=cycle, status="kept", order_by="id")


def split(pairs: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic train / held-out split by id: ``floor(n * fraction)`` pairs held out, spread evenly (pair ``i``
    when ``floor((i + 1) * fraction)`` steps up, so 0.25 holds out every fourth), and at least one of each as soon
    as there are two. At most half is held out, so training keeps the larger share."""
    pairs = sorted(pairs, key=lambda p: p["id"])
    if len(pairs) < 2:
        return pairs, []
    f = min(fraction, 0.5)
    held_idx = {i for i in range(len(pairs)) if int((i + 1) * f + 1e-9) > int(i * f + 1e-9)} or {len(pairs) - 1}
    return [p for i, p in enumerate(pairs) if i not in held_idx], [p for i, p in enumerate(pairs) if i in held_idx]


def conversational(pairs: list[dict]) -> list[dict]:
    """TRL's conversational preference rows."""
    return [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


def dataset_hash(pairs: list[dict]) -> str:
    return sha256(json.dumps(conversational(pairs), sort_keys=True))


# -- atomic files --


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# -- stats --


def _rule(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "unknown"


def stats(store: Store, run_id: str, cycle: int) -> dict[str, Any]:
    scen = store.rows("scenarios", run_id=run_id, cycle=cycle)
    pairs = store.rows("pairs", run_id=run_id, cycle=cycle)
    cat_of = {s["id"]: s["category"] for s in scen}
    by_category: dict[str, Counter] = {}
    for s in scen:
        by_category.setdefault(s["category"], Counter())["scenarios"] += 1
        if s["status"] == "failed":
            by_category[s["category"]]["failed"] += 1
    for p in pairs:
        by_category.setdefault(p.get("category") or cat_of.get(p["scenario_id"], "?"), Counter())[p["status"]] += 1

    def tally(rows: list[dict]) -> dict[str, int]:
        return dict(Counter(_rule(r) for row in rows for r in json.loads(row["reasons_json"] or "[]")).most_common())

    def dist(values: list[int]) -> dict[str, float]:
        if not values:
            return {}
        q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
        return {"min": min(values), "median": statistics.median(values), "p90": q[8], "max": max(values)}

    kept = [p for p in pairs if p["status"] == "kept"]
    topic_of = {s["id"]: s.get("topic") for s in scen}
    author_of = {s["id"]: s.get("author") for s in scen}
    seeded = [p for p in kept if topic_of.get(p["scenario_id"])]
    return {
        "run_id": run_id,
        "cycle": cycle,
        "scenarios": len(scen),
        "scenarios_failed": sum(s["status"] == "failed" for s in scen),
        "pairs": len(pairs),
        "kept": len(kept),
        "quarantined": sum(p["status"] == "quarantined" for p in pairs),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "by_reason": tally(pairs),  # why pairs were quarantined
        "scenario_reasons": tally([s for s in scen if s["status"] == "failed"]),  # why requests failed
        "lengths": {f: dist([len(p[f] or "") for p in kept]) for f in ("prompt", "chosen", "rejected", "critique")},
        # requests the facilitator wrote (a category's template, after the model's own failed), and how many kept
        "facilitator_requests": {
            "scenarios": sum(bool(s.get("author")) for s in scen),
            "kept": sum(bool(author_of.get(p["scenario_id"])) for p in kept),
        },
        # kept pairs whose request speaks of the topic it was seeded with (of those with a recorded topic)
        "on_topic": {
            "kept": sum(meaning.on_topic(p["prompt"] or "", topic_of[p["scenario_id"]]) for p in seeded),
            "of": len(seeded),
        },
    }


def quarantine(store: Store, run_id: str, cycle: int | None = None) -> list[dict]:
    """Quarantined pairs and failed scenarios, each with its reasons and raw text."""
    where: dict = {"run_id": run_id} if cycle is None else {"run_id": run_id, "cycle": cycle}
    out = []
    for s in store.rows("scenarios", **where, status="failed", order_by="cycle, idx"):
        out.append(
            {
                "id": s["id"],
                "kind": "scenario",
                "category": s["category"],
                "prompt": None,
                "reasons": json.loads(s["reasons_json"] or "[]"),
                "raw": s["raw"],
            }
        )
    category = {s["id"]: s["category"] for s in store.rows("scenarios", **where)}
    for p in store.rows("pairs", **where, status="quarantined", order_by="cycle, id"):
        out.append(
            {
                "id": p["id"],
                "kind": "pair",
                "category": p.get("category") or category.get(p["scenario_id"]),
                "prompt": p["prompt"],
                "reasons": json.loads(p["reasons_json"] or "[]"),
                "raw": p["raw"],
            }
        )
    return out


# -- export --


def provenance(ws: Workspace, store: Store, run_id: str, cycle: int, train: list[dict], held: list[dict]) -> dict:
    from luthitune import __version__
    from luthitune.prompts import template_hash

    run = store.get("runs", run_id)
    ctx = json.loads(run["config_json"])["context"]
    pairs = [*train, *held]
    const_ids = sorted({p["constitution_id"] for p in pairs})
    constitutions = [store.get("constitution_versions", c) for c in const_ids]
    scen = store.rows("scenarios", run_id=run_id, cycle=cycle)
    return {
        "format": FORMAT,
        "created_at": now(),
        "luthitune_version": __version__,
        "run_id": run_id,
        "cycle": cycle,
        "constitution": [{"id": c["id"], "version": c["version"], "hash": c["hash"]} for c in constitutions],
        "model": {"backend": run["backend"], "chat_model": run["chat_model"], "base_model": run["base_model"]},
        "prompt_templates": {
            "scenario_request.md": sorted({s["template_hash"] for s in scen if s["template_hash"]}),
            "self_critique.md": sorted({p["template_hash"] for p in pairs if p["template_hash"]}),
            "current": {n: template_hash(n) for n in ("scenario_request.md", "self_critique.md", "judge.md")},
        },
        "sampling": {
            "workspace": ws.config.sampling.model_dump(),
            **{k: ctx.get(k) for k in ("scenario_temperature", "answer_temperature", "seed")},
        },
        "settings": {
            k: ctx.get(k) for k in ("n_scenarios", "category_mix", "dedup_threshold", "judge", "eval_fraction")
        },
        "counts": stats(store, run_id, cycle),
        "split": {"train": len(train), "held_out": len(held)},
        "dataset_hash": dataset_hash(pairs),
        "pair_ids": {"train": [p["id"] for p in train], "held_out": [p["id"] for p in held]},
    }


def features():
    """The columns' types, given rather than inferred: an empty split then still has them."""
    from datasets import Features, Value

    messages = [{"role": Value("string"), "content": Value("string")}]  # a list of messages
    return Features({"prompt": messages, "chosen": messages, "rejected": messages})


def save_datasets(folder: Path, splits: dict[str, list[dict]]) -> None:
    """``datasets.load_from_disk(folder)`` gives these splits, empty ones included (one shard each: with none, as
    ``save_to_disk`` writes for an empty split by default, ``load_from_disk`` fails with an IndexError)."""
    from datasets import Dataset, DatasetDict

    feats = features()
    dd = DatasetDict(
        {k: Dataset.from_dict({c: [r[c] for r in rows] for c in feats}, features=feats) for k, rows in splits.items()}
    )
    dd.save_to_disk(str(folder), num_shards=dict.fromkeys(dd, 1))


def dataset_card(run_id: str, cycle: int, n_train: int, n_held: int) -> str:
    """A dataset card whose ``configs`` tell ``load_dataset(export_dir)`` to read the JSONL files, and only those
    (the folder also holds the arrow files of ``dataset/``); an empty held-out split is left out of it."""
    files = [("train", "train.jsonl")] + ([("test", "held_out.jsonl")] if n_held else [])
    listed = "".join(f"  - split: {split}\n    path: {path}\n" for split, path in files)
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{listed}tags:\n- dpo\n- luthitune\n---\n\n"
        f"# Preference pairs of {run_id}, cycle {cycle}\n\n"
        f"{n_train} training pair(s) and {n_held} held-out pair(s) in TRL's conversational preference format "
        "(`prompt`, `chosen`, `rejected` as lists of messages), written by `luthitune data export`. "
        "`provenance.json` records the constitution, the model, the prompts and the settings that produced them.\n\n"
        "- `load_dataset(THIS_FOLDER)`: the JSONL files, split `train`"
        + (" and `test` (the held-out pairs)" if n_held else " (no held-out pairs)")
        + ";\n- `load_from_disk(THIS_FOLDER/dataset)`: the same rows, splits `train` and `test`;\n"
        "- `trl dpo --dataset_name THIS_FOLDER ...` trains on them.\n"
    )


def export(ws: Workspace, run_id: str | None = None, cycle: int | None = None, out: Path | None = None) -> dict:
    """Write the kept pairs of a run's cycle; returns the provenance record (with the paths written)."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    store = Store(ws.db_path)
    run_id, cycle = resolve(store, run_id, cycle)
    kept = kept_pairs(store, run_id, cycle)
    if not kept:
        raise NotFound(
            f"Run {run_id} cycle {cycle} has no kept pairs to export; "
            f"`luthitune data quarantine --run {run_id}` shows why."
        )
    ctx = json.loads(store.get("runs", run_id)["config_json"])["context"]
    train, held = split(kept, ctx.get("eval_fraction", 0.25))
    from luthitune.names import check_name, inside

    # The run's name comes from the database, which is untrusted too: the folder must stay inside data/exports/.
    target = out or inside(ws.data_dir / "exports", f"{check_name(run_id)}-c{cycle}")
    if target.exists() and not (target / "provenance.json").is_file():
        raise UsageError(
            f"{target} exists and is not a LuthiTune export (it has no provenance.json): exporting there would "
            "replace what it holds. Choose an empty or new folder with --out."
        )
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "train.jsonl").write_text(jsonl(conversational(train)), encoding="utf-8")
    (tmp / "held_out.jsonl").write_text(jsonl(conversational(held)), encoding="utf-8")
    save_datasets(tmp / "dataset", {"train": conversational(train), "test": conversational(held)})
    (tmp / "README.md").write_text(dataset_card(run_id, cycle, len(train), len(held)), encoding="utf-8")
    record = provenance(ws, store, run_id, cycle, train, held)
    record["files"] = {
        "train": str(target / "train.jsonl"),
        "held_out": str(target / "held_out.jsonl"),
        "datasets": str(target / "dataset"),
        "card": str(target / "README.md"),
        "flat": str(ws.data_dir / "generated_dataset.jsonl"),
    }
    (tmp / "provenance.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    flat = [{"prompt": p["prompt"], "rejected": p["rejected"], "chosen": p["chosen"]} for p in kept]
    write_atomic(ws.data_dir / "generated_dataset.jsonl", jsonl(flat))
    return record
