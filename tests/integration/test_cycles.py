"""Two protocol cycles: two adapters trained for real on one embedded base, two real evaluations, and a revision in
between that the second cycle's data follows.

This test is about the cycles' lineage, so the model's words come from the fake chat model (it consents, drafts,
answers and proposes an amendment the same way every time, through the same seam as a real chat model); the DPO
training, the adapters and the evaluations run on the real embedded model. What SmolLM2 itself writes is tested by
the demo's test, the crash test and the outcome benchmark's.
"""

from __future__ import annotations

import json

from fakes import SchemaFakeModel, allow_small_runs

from luthitune.protocol import Protocol
from luthitune.workspace import init_workspace


def test_two_cycles_train_two_adapters_on_one_base_and_the_second_follows_the_revision(tmp_path):
    ws, _ = init_workspace(tmp_path / "ws")
    allow_small_runs(ws)  # a few pairs per cycle
    p = Protocol(type(ws).open(ws.root), llm=SchemaFakeModel())
    run = p.start(
        {
            "autopilot": True,
            "n_scenarios": 5,
            "interview_turns": 1,
            "max_cycles": 2,
            "train": {"epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 5e-4},
            "evaluation": {"probes_per_set": 1, "max_new_tokens": 16},
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
    assert proposals[0]["status"] == "approved"  # the amendment applies and the model consented to it
    # cycle 1's data follows the constitution in force after cycle 0's revision: the proposal if it was adopted
    initial = next(v for v in versions if v["status"] == "approved" and v["author"] != "model (adapter)")
    in_force = proposals[0]["id"] if proposals[0]["status"] == "approved" else initial["id"]
    assert {p_["constitution_id"] for p_ in s.rows("pairs", run_id=run, cycle=1)} == {in_force}
    last = [v for v in versions if v["status"] == "approved"][-1]
    assert (p.ws.data_dir / "constitution.md").read_text() == last["text"]
