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
from luthitune.config import init_workspace
from luthitune.export import export_ollama
from luthitune.store import Store

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
    manifest = {"base_model": identity.train_identity(ws), "run_id": "run-e", "cycle": 0}
    (adapter / "luthitune-manifest.json").write_text(json.dumps(manifest))
    return ws, adapter, peft.eval()


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
    assert f"\nFROM {gguf_path()}\nADAPTER ./adapter\n" in r.modelfile.read_text()
