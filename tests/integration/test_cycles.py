"""Two protocol cycles on the embedded model: two adapters, two evaluations, a v1 → v2 → v3 lineage."""

from __future__ import annotations

import json

import yaml

from luthitune.config import init_workspace
from luthitune.protocol import Protocol


def test_two_cycles_train_two_adapters_on_one_base_and_amend_twice(tmp_path):
    ws, _ = init_workspace(tmp_path / "ws")
    cfg = yaml.safe_load((ws.root / "luthitune.yaml").read_text())
    # A fixed sampling seed makes this run reproducible on a CPU (every generation seeds its sequences). SmolLM2's
    # choices are its own: with seed 5 it ratifies its first draft, proposes an applicable amendment in both
    # revisions and consents to both (other seeds decline one, which the run rightly respects). Only the length
    # rule, so enough of a 135M model's pairs are kept to train on.
    cfg["sampling"]["seed"] = 5
    cfg["practice"].update(rules=["length"], dedup_threshold=1.0)
    (ws.root / "luthitune.yaml").write_text(yaml.safe_dump(cfg))
    p = Protocol(type(ws).open(ws.root))
    run = p.start(
        {
            "autopilot": True,
            "n_scenarios": 3,
            "interview_turns": 1,
            "max_cycles": 2,
            "max_consent_rounds": 5,
            "max_draft_rounds": 5,
            "train": {"epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 5e-4},
            "evaluation": {"probes_per_set": 1, "max_new_tokens": 24},
        },
        run_id="cycles",
    )
    st = p.advance(run)
    assert st.status == "done", st.values.get("ended")
    s = p.store

    trained = s.rows("training_runs", "run_id = ? and status = 'done'", [run], order_by="cycle")
    assert [t["cycle"] for t in trained] == [0, 1]
    paths = [t["adapter_path"] for t in trained]
    assert len(set(paths)) == 2
    manifests = [
        json.loads((p.ws.models_dir / "adapters" / t["adapter_name"] / "luthitune-manifest.json").read_text())
        for t in trained
    ]
    # the same base under both adapters, each trained fresh on it (not stacked, not continued)
    assert manifests[0]["base_model"]["digest"] == manifests[1]["base_model"]["digest"]
    assert manifests[1]["continued_from_adapter"] is None
    assert manifests[0]["dataset"]["hash"] != manifests[1]["dataset"]["hash"]

    evaluated = {(e["cycle"], e["model"]) for e in s.rows("evaluations", "run_id = ?", [run])}
    assert {(0, "base"), (0, "adapter"), (1, "base"), (1, "adapter")} <= evaluated
    assert (p.ws.data_dir / "reports" / "cycles-c1.md").exists()

    versions = {v["version"]: v for v in s.rows("constitution_versions", "run_id = ?", [run])}
    approved = sorted(v for v, row in versions.items() if row["status"] == "approved")
    assert approved == [1, 2, 3], {v: r["status"] for v, r in versions.items()}
    assert versions[2]["parent_id"] == versions[1]["id"] and versions[3]["parent_id"] == versions[2]["id"]
    for v in (2, 3):  # each amendment: proposed by the trained model, consented to, approved
        proposer = json.loads(versions[v]["model_json"])
        assert proposer["adapter_name"] == trained[v - 2]["adapter_name"] and proposer["adapters"]
        assert s.get("consents", versions[v]["consent_id"])["decision"] != "no"
    # cycle 1's data was generated under v2, the version the first revision produced
    assert {p_["constitution_id"] for p_ in s.rows("pairs", "run_id = ? and cycle = 1", [run])} == {versions[2]["id"]}
    assert (p.ws.data_dir / "constitution.md").read_text() == versions[3]["text"]
