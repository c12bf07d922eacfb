"""Two protocol cycles on the embedded model: two adapters on one base, two evaluations, and a revision in between
that the second cycle's data follows."""

from __future__ import annotations

import json

import yaml

from luthitune.protocol import Protocol
from luthitune.workspace import init_workspace


def test_two_cycles_train_two_adapters_on_one_base_and_the_second_follows_the_revision(tmp_path):
    ws, _ = init_workspace(tmp_path / "ws")
    cfg = yaml.safe_load((ws.root / "luthitune.yaml").read_text())
    # A fixed sampling seed makes this run reproducible on a CPU (every generation seeds its sequences); with the
    # demo's seed SmolLM2 consents. Only the length rule among the optional ones (the meaning checks always apply)
    # and training.min_pairs 1: this test is about the cycle's lineage, not about how much data it keeps.
    cfg["sampling"]["seed"] = 5
    cfg["practice"].update(rules=["length"], dedup_threshold=1.0)
    (ws.root / "luthitune.yaml").write_text(yaml.safe_dump(cfg))
    p = Protocol(type(ws).open(ws.root))
    run = p.start(
        {
            "autopilot": True,
            "n_scenarios": 5,
            "interview_turns": 1,
            "max_cycles": 2,
            "max_consent_rounds": 5,
            "max_draft_rounds": 1,
            "starter_constitution": True,
            "train": {"epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 5e-4, "min_pairs": 1},
            "evaluation": {"probes_per_set": 1, "max_new_tokens": 24},
        },
        run_id="cycles",
    )
    st = p.advance(run)
    assert st.status == "done", st.values.get("ended")
    s = p.store

    trained = s.rows("training_runs", run_id=run, status="done", order_by="cycle")
    assert [t["cycle"] for t in trained] == [0, 1]
    assert len({t["adapter_path"] for t in trained}) == 2
    manifests = [
        json.loads((p.ws.models_dir / "adapters" / t["adapter_name"] / "luthitune-manifest.json").read_text())
        for t in trained
    ]
    # the same base under both adapters, each trained fresh on it (not stacked, not continued)
    assert manifests[0]["base_model"]["digest"] == manifests[1]["base_model"]["digest"]
    assert manifests[1]["continued_from_adapter"] is None
    assert manifests[0]["dataset"]["hash"] != manifests[1]["dataset"]["hash"]

    evaluated = {(e["cycle"], e["model"]) for e in s.rows("evaluations", run_id=run)}
    assert {(0, "base"), (0, "adapter"), (1, "base"), (1, "adapter")} <= evaluated
    assert (p.ws.data_dir / "reports" / "cycles-c1.md").exists()

    # Each cycle ends with the trained model's proposal, stored with the model that proposed it, whatever became of
    # it (adopted, declined, refused by the checks, or no change).
    versions = s.rows("constitution_versions", run_id=run, order_by="version")
    proposals = [v for v in versions if v["author"] == "model (adapter)"]
    assert len(proposals) == 2
    for v, t in zip(proposals, trained, strict=True):
        assert json.loads(v["model_json"])["adapter_name"] == t["adapter_name"]
        assert v["status"] in {"approved", "declined", "unchanged", "rejected"}
    # cycle 1's data follows the constitution in force after cycle 0's revision: the proposal if it was adopted
    initial = next(v for v in versions if v["status"] == "approved" and v["author"] != "model (adapter)")
    in_force = proposals[0]["id"] if proposals[0]["status"] == "approved" else initial["id"]
    assert {p_["constitution_id"] for p_ in s.rows("pairs", run_id=run, cycle=1)} == {in_force}
    last = [v for v in versions if v["status"] == "approved"][-1]
    assert (p.ws.data_dir / "constitution.md").read_text() == last["text"]
