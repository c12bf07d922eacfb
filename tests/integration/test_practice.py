"""Phase 2 on the real embedded model, and the exported dataset trained by plain TRL, unchanged."""

from __future__ import annotations

import json

from fakes import SchemaFakeModel

from luthitune import dataset
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult


def test_practice_on_the_embedded_model_stores_every_item_with_a_verdict(workspace):
    """Interview on the fake model (fast), then scenarios → self-critique → validation on SmolLM2."""
    from luthitune.graph.state import Context

    p = Protocol(workspace)
    run = p.start({"autopilot": True, "n_scenarios": 4, "interview_turns": 1})
    settings, cfg = p.context(run).settings(), p.config(run)
    fake = Context.from_settings(settings, llm=SchemaFakeModel())
    p.graph.invoke({"run_id": run, "cycle": 0}, cfg, context=fake, interrupt_before=["generate_scenarios"])
    real = Context.from_settings(settings)  # the workspace's backend: the embedded model
    p.graph.invoke(None, cfg, context=real, interrupt_before=["train_dpo"])
    scen = p.store.rows("scenarios", "run_id = ?", [run])
    pairs = p.store.rows("pairs", "run_id = ?", [run])
    assert len(scen) == 4 and {s["status"] for s in scen} <= {"generated", "failed"}
    assert len(pairs) == sum(s["status"] == "generated" for s in scen)
    for pr in pairs:  # every pair has a verdict; a quarantined one says why and keeps the raw text
        assert pr["status"] in {"kept", "quarantined"} and pr["raw"]
        assert pr["status"] == "kept" or json.loads(pr["reasons_json"])
    st = dataset.stats(p.store, run, 0)
    assert st["kept"] + st["quarantined"] == len(pairs)


def test_exported_jsonl_trains_with_stock_trl(workspace, tmp_path):
    """`data export` output, loaded with `datasets.load_dataset("json")`, trains with TRL's DPOTrainer as is."""

    def trainer(pairs, name):
        return TrainResult(str(tmp_path), {})

    p = Protocol(workspace, llm=SchemaFakeModel(), trainer=trainer, evaluator=lambda pairs, a: {"base": {}})
    run = p.start({"autopilot": True, "n_scenarios": 6, "interview_turns": 1})
    p.advance(run)
    rec = dataset.export(p.ws, run)

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from luthitune.backends import local_model_dir

    model_dir = local_model_dir(workspace)
    train = load_dataset("json", data_files=rec["files"]["train"], split="train")
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        max_length=256,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
        args=args,
        train_dataset=train,
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    out = trainer.train()
    assert out.global_step == 2
    assert any("loss" in h for h in trainer.state.log_history)
