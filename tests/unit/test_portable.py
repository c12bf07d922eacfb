"""Files written the way the tools they go to read them: a merged config.json with what Ollama's and llama.cpp's
converters read, an adapter whose config and card name its base portably, datasets that load with an empty
held-out split."""

from __future__ import annotations

import json

import pytest
import torch
from fakes import SchemaFakeModel

from luthitune import dataset
from luthitune.portable import converter_config, hub_id, portable_adapter, write_converter_config
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult


def tiny_llama(**rope):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
        **rope,
    )
    return LlamaForCausalLM(cfg)


def test_converter_config_puts_rope_theta_where_ollama_reads_it_and_transformers_still_loads_it(tmp_path):
    from transformers import AutoConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    tiny_llama(rope_parameters=rope).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_theta" not in saved  # transformers 5 writes rope_parameters only: the reason for this
    cfg = write_converter_config(tmp_path)
    assert cfg["rope_theta"] == 500000.0  # Ollama's convert_llama.go: RopeTheta `json:"rope_theta"`
    assert cfg["rope_scaling"]["rope_type"] == cfg["rope_scaling"]["type"] == "llama3"
    assert cfg["rope_scaling"]["factor"] == 8.0 and "rope_theta" not in cfg["rope_scaling"]
    assert cfg["rope_parameters"] == saved["rope_parameters"]  # llama.cpp reads this spelling first
    assert cfg["torch_dtype"] == saved["dtype"]
    again = AutoConfig.from_pretrained(tmp_path)  # the extra keys do not change what transformers loads
    assert again.rope_parameters == AutoConfig.from_pretrained(tmp_path).rope_parameters
    assert again.rope_parameters["rope_theta"] == 500000.0 and again.rope_parameters["rope_type"] == "llama3"


def test_converter_config_keeps_keys_already_there_and_adds_no_scaling_for_plain_rope():
    cfg = converter_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}, "rope_theta": 7.0})
    assert cfg["rope_theta"] == 7.0 and "rope_scaling" not in cfg and "torch_dtype" not in cfg


GGUF_BASE = {
    "kind": "gguf",
    "name": "smollm2-135m-instruct",
    "digest": "sha256:b179" + "0" * 60,
    "quantization": "Q4_1",
    "weights_dir": "/home/x/models/base/smollm2-135m-instruct",
}


def peft_adapter(tmp_path, base_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))  # as training loads its base: from a folder
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "adapter"
    peft.save_pretrained(out)
    return out


def test_an_adapter_names_its_base_by_gguf_digest_not_by_a_local_path(tmp_path):
    from huggingface_hub import ModelCard
    from peft import PeftModel

    base_dir = tmp_path / "models" / "base" / "local-cache"
    out = peft_adapter(tmp_path, base_dir)
    assert str(base_dir) in (out / "adapter_config.json").read_text()  # what PEFT writes
    assert str(base_dir) in (out / "README.md").read_text()
    assert portable_adapter(out, GGUF_BASE) == GGUF_BASE["digest"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == GGUF_BASE["digest"]
    card = (out / "README.md").read_text()
    assert str(base_dir) not in card and "/home/x" not in card
    assert GGUF_BASE["digest"] in card and "Q4_1" in card
    data = ModelCard.load(out / "README.md").data
    assert data.base_model is None and not any(str(t).startswith("base_model:") for t in data.tags or [])
    portable_adapter(out, GGUF_BASE)  # once more: one section, not two
    assert (out / "README.md").read_text().count("## Base model (LuthiTune)") == 1
    loaded = PeftModel.from_pretrained(tiny_llama(), str(out))  # PEFT still loads it onto a given base
    assert loaded.peft_config["default"].base_model_name_or_path == GGUF_BASE["digest"]


def test_a_base_from_the_hub_cache_is_named_by_its_hub_id(tmp_path):
    from huggingface_hub import ModelCard

    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    base = {"kind": "weights", "name": str(snapshot), "digest": "sha256:" + "1" * 64, "weights_dir": str(snapshot)}
    assert hub_id(base) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id({**base, "weights_dir": str(tmp_path / "mine")}) is None  # a local folder: origin unknown
    assert hub_id({**GGUF_BASE, "weights_dir": str(snapshot)}) is None  # dequantized GGUF: not the hub's weights
    out = peft_adapter(tmp_path, snapshot)
    portable_adapter(out, base)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id(base)
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == hub_id(base) and f"base_model:adapter:{hub_id(base)}" in data.tags


@pytest.fixture
def exported(workspace, tmp_path):
    def trainer(pairs, name):
        (tmp_path / name).mkdir(exist_ok=True)
        return TrainResult(str(tmp_path / name), {"loss": 0.5})

    def export(n_scenarios: int):
        p = Protocol(
            workspace,
            llm=SchemaFakeModel(),
            trainer=trainer,
            evaluator=lambda pairs, adapter: {"base": {"acc": 0.5}, "adapter": {"acc": 1.0}},
        )
        run = p.start({"autopilot": True, "n_scenarios": n_scenarios, "interview_turns": 1, "review_sample": 0})
        p.advance(run)
        rec = dataset.export(p.ws, run)
        return p.ws.data_dir / "exports" / f"{run}-c0", rec

    return export


def test_an_export_with_an_empty_held_out_split_loads_both_ways(exported):
    from datasets import load_dataset, load_from_disk

    out, rec = exported(1)
    assert rec["split"] == {"train": 1, "held_out": 0}
    folder = load_dataset(str(out))  # failed before: arrow files and JSONL in one folder, an empty JSONL split
    assert list(folder) == ["train"] and folder["train"].num_rows == 1
    assert folder["train"][0]["chosen"][0]["role"] == "assistant"
    disk = load_from_disk(str(out / "dataset"))  # an IndexError before: no shard for the empty split
    assert disk["train"].num_rows == 1 and disk["test"].num_rows == 0
    assert disk["test"].column_names == ["prompt", "chosen", "rejected"]


def test_an_export_folder_loads_its_jsonl_splits(exported):
    from datasets import load_dataset

    out, rec = exported(8)
    folder = load_dataset(str(out))
    assert {k: v.num_rows for k, v in folder.items()} == {
        "train": rec["split"]["train"],
        "test": rec["split"]["held_out"],
    }
    assert folder["test"][0]["prompt"] == json.loads((out / "held_out.jsonl").read_text().splitlines()[0])["prompt"]


def fake_sdist(tmp_path, *, evil: bool = False):
    """A source distribution laid out as llama-cpp-python's: the converters under vendor/llama.cpp/."""
    import io
    import tarfile

    from luthitune.gguf_export import VERSION

    path = tmp_path / f"llama_cpp_python-{VERSION}.tar.gz"
    root = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    files = {
        "convert_hf_to_gguf.py": "print('hf')\n",
        "convert_lora_to_gguf.py": "print('lora')\n",
        "conversion/__init__.py": "",
        "gguf-py/gguf/__init__.py": "",
        "LICENSE": "MIT\n",
        "ggml/src/big.c": "int x;\n",  # the C sources are not needed
    }
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            info = tarfile.TarInfo(root + rel)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
        if evil:
            link = tarfile.TarInfo(root + "conversion/escape.py")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


def test_the_converter_is_installed_from_the_sdist_with_only_its_python_files(tmp_path, monkeypatch):
    from luthitune.gguf_export import SOURCE, converter_dir, install_converter

    target = tmp_path / "share" / "llama.cpp"
    install_converter(target, sdist=fake_sdist(tmp_path, evil=True))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE", SOURCE]
    )
    assert not (target / "conversion" / "escape.py").exists()  # no link out of the folder
    record = json.loads((target / SOURCE).read_text())
    assert record["package"] == "llama-cpp-python" and len(record["sdist_sha256"]) == 64
    monkeypatch.setenv("LLAMA_CPP_DIR", str(target))
    assert converter_dir() == target


def test_without_a_converter_the_gguf_export_says_how_to_install_it(workspace, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from luthitune.cli import app

    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    r = CliRunner().invoke(app, ["export", "gguf", "--adapter", "x", "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 2 and "LLAMA_CPP_DIR" in r.output and "convert_hf_to_gguf.py" in r.output
    monkeypatch.delenv("LLAMA_CPP_DIR")
    monkeypatch.setattr("luthitune.gguf_export.default_converter_dir", lambda: tmp_path / "none")
    r = CliRunner().invoke(app, ["export", "gguf", "--adapter", "x", "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 2 and f"luthitune -w {workspace.root} export converter" in r.output
