"""`luthitune export ollama` on the real embedded model: merged mode writes safetensors that transformers loads and
that generate like base + adapter; adapter mode writes `FROM <the same Ollama model>` + `ADAPTER` and creates the
model through a stub of Ollama's API; both Modelfiles carry the ChatML template, stops and parameters."""

import json
import shutil

import pytest
import torch
from conftest import closed_port
from ollama_stub import CHATML_TEMPLATE, OllamaStub, make_store, show_answer
from typer.testing import CliRunner

from luthitune import identity
from luthitune.backends import local_model_dir
from luthitune.backends.embedded import gguf_path
from luthitune.cli import app
from luthitune.export import export_ollama
from luthitune.store import Store
from luthitune.workspace import init_workspace

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A workspace on the embedded model and a LoRA adapter (r=4, random weights) saved as training saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws, _ = init_workspace(tmp_path_factory.mktemp("export") / "ws")
    ws.config.ollama.base_url = f"http://127.0.0.1:{closed_port()}"
    base_dir = local_model_dir(ws, ws.config.base_model)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = ws.models_dir / "adapters" / "run-e-c0"
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(adapter)
    manifest = {**MANIFEST, "base_model": identity.train_identity(ws)}
    (adapter / "luthitune-manifest.json").write_text(json.dumps(manifest))
    return ws, adapter, peft.eval()


MANIFEST = {"run_id": "run-e", "cycle": 0, "config": {"dpo": {"max_length": 384}}}  # trained on 384-token pairs
# What Ollama's llama converter (convert/convert_llama.go: llamaModel, ModelParameters) and llama.cpp's
# convert_hf_to_gguf.py (TextModel.__init__, set_gguf_parameters) read from config.json.
CONVERTER_KEYS = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 49152,
    "num_hidden_layers": 30,
    "max_position_embeddings": 8192,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "rope_theta": 100000.0,  # SmolLM2's; without it Ollama converts with 10000
    "tie_word_embeddings": True,
}


def test_merged_export_loads_and_generates_like_base_plus_adapter(made):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws, adapter, peft = made
    r = CliRunner().invoke(
        app, ["export", "ollama", "--adapter", "run-e-c0", "-w", str(ws.root)], terminal_width=400, env={}
    )
    assert r.exit_code == 0, r.output
    name = "smollm2-135m-instruct-luthitune-c0"  # merged by default: the base is not an Ollama model
    folder = ws.models_dir / "merged" / name
    assert f"ollama create {name} -f {folder / 'Modelfile'}" in r.output.replace("\n", "")
    assert "dequantized" in r.output and "Q4_1" in r.output

    text = (folder / "Modelfile").read_text()
    assert "\nFROM .\n" in text and "ADAPTER" not in text
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text and f'SYSTEM """{SMOL_SYSTEM}"""' in text
    assert 'PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\n' in text
    assert "PARAMETER temperature 0.7\n" in text and "PARAMETER repeat_penalty 1.1\n" in text
    assert "PARAMETER num_ctx 384\n" in text  # the training length

    config = json.loads((folder / "config.json").read_text())
    assert {k: config.get(k) for k in CONVERTER_KEYS} == CONVERTER_KEYS
    assert config["rms_norm_eps"] == pytest.approx(1e-5) and config["torch_dtype"] == "float16"
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"]  # llama.cpp reads this one first

    merged = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is consent?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.inference_mode():
        expected, got = peft(ids).logits[0, -1], merged(ids).logits[0, -1]
    assert torch.allclose(expected, got, atol=0.05, rtol=0.01)  # float16 weights: close, not identical
    out = merged.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]

    row = Store(ws.db_path).get("model_exports", name)
    assert row["mode"] == "merged" and row["created"] == 0 and row["run_id"] == "run-e"
    assert row["adapter_sha256"] == identity.adapter_digest(adapter) and row["base_digest"].startswith("sha256:b179")


def test_adapter_mode_from_the_same_ollama_model_is_created_through_the_api(made, tmp_path, monkeypatch):
    ws, adapter, _ = made
    root = tmp_path / "ollama-models"
    digest = make_store(root, "smol", "latest", gguf_path(), template=CHATML_TEMPLATE)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    template = CHATML_TEMPLATE.replace("{{ .Content }}", "{{ .Content | trim }}")  # the template Ollama serves
    with OllamaStub(
        {"smol:latest": show_answer(digest, root / "blobs" / f"sha256-{digest[7:]}", template=template)}
    ) as s:
        monkeypatch.setattr(ws.config.ollama, "base_url", s.url)
        monkeypatch.setattr(ws.config, "base_model", "ollama:smol:latest")
        monkeypatch.setattr(ws.config, "chat_model", "ollama:smol:latest")
        on_ollama = tmp_path / "run-o-c0"
        shutil.copytree(adapter, on_ollama)
        manifest = {"base_model": identity.train_identity(ws), "run_id": "run-o", "cycle": 0}
        (on_ollama / "luthitune-manifest.json").write_text(json.dumps(manifest))
        store = Store(ws.db_path)

        r = export_ollama(ws, str(on_ollama), store=store)  # adapter mode by default; the server answers
        assert (r.mode, r.name, r.created, r.status) == ("adapter", "smol-luthitune-c0", True, "success")
        text = r.modelfile.read_text()
        assert "\nFROM smol:latest\nADAPTER ./adapter\n" in text and f'TEMPLATE """{template}"""' in text
        assert 'PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\n' in text
        assert "PARAMETER temperature 0.7\n" in text  # how the protocol talked to it, over Ollama's 0.2
        assert sorted(p.name for p in (r.folder / "adapter").iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        assert any("original Q4_1 weights" in n for n in r.notes)
        exported_cfg = json.loads((r.folder / "adapter" / "adapter_config.json").read_text())
        assert exported_cfg["num_key_value_heads"] == 3  # SmolLM2: 9 query heads, 3 key-value heads

        body = s.created[-1]
        assert body["model"] == "smol-luthitune-c0" and body["from"] == "smol:latest" and "files" not in body
        assert body["adapters"] == {
            "adapter_config.json": identity.file_digest(r.folder / "adapter" / "adapter_config.json"),
            "adapter_model.safetensors": identity.adapter_digest(on_ollama),
        }
        assert body["template"] == template and body["parameters"]["stop"] == ["<|im_start|>", "<|im_end|>"]

    # the next cycle talks to the exported model: base digest + adapter hash
    target = identity.trained_model(store, on_ollama)
    assert target.ollama_model == "smol-luthitune-c0"
    assert target.identity["digest"] == digest and target.identity["adapters"] == [identity.adapter_digest(on_ollama)]


def test_adapter_mode_on_the_embedded_base_is_from_its_gguf(made):
    ws, _, _ = made
    r = export_ollama(ws, "run-e-c0", "smol-tuned", mode="adapter", store=Store(ws.db_path))
    assert (
        not r.created
        and r.command == f"OLLAMA_HOST={ws.config.ollama.base_url} ollama create smol-tuned -f {r.modelfile}"
    )
    # FROM a link inside the export folder, not a path into the venv's site-packages (gone after a reinstall)
    assert "\nFROM ./base.gguf\nADAPTER ./adapter\n" in r.modelfile.read_text()
    linked = r.folder / "base.gguf"
    assert linked.is_file() and not linked.is_symlink()
    assert linked.stat().st_ino == gguf_path().stat().st_ino or identity.file_digest(linked) == identity.file_digest(
        gguf_path()
    )
    assert "PARAMETER num_ctx 384\n" in r.modelfile.read_text()


def test_gguf_export_with_llama_cpps_converters(made):
    """The merged model and the adapter as GGUF, by llama.cpp's own converters: the metadata llama.cpp and Ollama
    run it with, and the merged weights themselves."""
    from gguf import GGUFReader
    from safetensors import safe_open

    from luthitune.gguf_export import export_gguf

    ws, _, _ = made
    r = export_gguf(ws, "run-e-c0", "smol-tuned")
    assert r.model.name == "smol-tuned-F16.gguf" and r.adapter.name == "smol-tuned-lora-F16.gguf"
    model = GGUFReader(str(r.model))
    meta = {k: f.contents() for k, f in model.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "smol-tuned"
    assert meta["llama.rope.freq_base"] == 100000.0 and meta["llama.context_length"] == 8192
    assert (meta["llama.block_count"], meta["llama.attention.head_count_kv"]) == (30, 3)
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    tensors = {t.name: t for t in model.tensors}
    with safe_open(str(r.merged / "model.safetensors"), framework="pt") as f:  # the merged float16 weights
        for gguf_name, hf_name in (
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # carries the adapter's change
            ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight"),
        ):
            expected = f.get_tensor(hf_name).numpy()
            assert tensors[gguf_name].data.shape == expected.shape
            assert (tensors[gguf_name].data == expected).all(), gguf_name
    lora = GGUFReader(str(r.adapter))
    assert lora.fields["general.type"].contents() == "adapter" and lora.fields["adapter.lora.alpha"].contents() == 8.0
    assert len(lora.tensors) == 30 * 7 * 2  # lora_a and lora_b for every projection of every block
    text = r.modelfile.read_text()
    assert "\nFROM ./smol-tuned-F16.gguf\n" in text and "PARAMETER num_ctx 384\n" in text
    record = json.loads((r.folder / "luthitune-export.json").read_text())
    assert record["converter"]["package"] == "llama-cpp-python" and set(record["files"]) == {
        r.model.name,
        r.adapter.name,
    }
    assert record["files"][r.model.name] == identity.file_digest(r.model)
