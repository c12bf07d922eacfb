"""`ollama:` bases: resolved through a fake Ollama model store or a stub of /api/show, dequantized once with
transformers' GGUF loader and cached by the blob's digest (a tiny GGUF), and trained on the real SmolLM2 GGUF
served as `smol:latest` (two DPO steps) — the same blob, by digest, from resolution to adapter."""

import json
import time

import pytest
from conftest import closed_port
from ollama_stub import CHATML_TEMPLATE, OllamaStub, make_store, show_answer, write_tiny_gguf

from luthitune import identity
from luthitune.backends import local_model_dir
from luthitune.backends.embedded import gguf_path
from luthitune.errors import BackendUnavailable
from luthitune.workspace import Workspace


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fake Ollama store whose `smol:latest` blob is the SmolLM2 GGUF (a symlink named by its digest)."""
    root = tmp_path / "ollama-models"
    digest = make_store(
        root, "smol", "latest", gguf_path(), template=CHATML_TEMPLATE, params={"stop": ["<|im_start|>", "<|im_end|>"]}
    )
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root, digest


def workspace(tmp_path, url: str, model: str = "ollama:smol:latest") -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "luthitune.yaml").write_text(
        f"backend: local\nchat_model: {model}\nbase_model: {model}\nollama:\n  base_url: {url}\n"
    )
    return Workspace.open(root)


def test_ollama_blob_is_dequantized_once_and_cached_by_digest(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "ollama-models"
    digest = make_store(root, "tiny", "latest", write_tiny_gguf(tmp_path / "tiny.gguf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("LUTHITUNE_BASE_CACHE", str(tmp_path / "cache"))
    ws = workspace(tmp_path, f"http://127.0.0.1:{closed_port()}", "ollama:tiny")  # no server: the store answers

    folder = local_model_dir(ws, ws.config.base_model)
    assert folder == tmp_path / "cache" / f"ollama-sha256-{digest[7:]}"
    source = json.loads((folder / "luthitune-source.json").read_text())
    assert source["blob_digest"] == digest and source["gguf_sha256"] == digest[7:]
    assert (source["quantization_type"], source["architecture"], source["ollama_model"]) == (
        "Q4_1",
        "llama",
        "tiny:latest",
    )
    assert source["resolved_via"] == f"Ollama model store {root}" and source["tensor_types"]["Q4_1"] == 8
    assert not list((tmp_path / "cache").glob("*.partial")) and not list((tmp_path / "cache").glob("*.gguf-src"))
    model = AutoModelForCausalLM.from_pretrained(str(folder))  # plain float32 safetensors now
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert model.generate(**tok("hi", return_tensors="pt"), max_new_tokens=2, do_sample=False).shape[1] >= 3
    t0 = time.perf_counter()
    assert local_model_dir(ws, "ollama:tiny:latest") == folder and time.perf_counter() - t0 < 2  # cached by digest
    ident = identity.train_identity(ws)
    assert ident["digest"] == digest and identity.dir_identity(folder)["digest"] == digest


def test_ollama_base_trains_the_same_blob(tmp_path, store):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _, digest = store
    ws = workspace(tmp_path, f"http://127.0.0.1:{closed_port()}")  # no server: the store answers

    ids = identity.check(ws)
    assert ids.match.same and ids.match.verified and ids.train["digest"] == ids.chat["digest"] == digest
    assert ids.train["source"].startswith("Ollama model store")
    # The same GGUF as the embedded model: the content-addressed cache gives its dequantized copy, nothing is redone.
    folder = local_model_dir(ws, ws.config.base_model)
    assert identity.dir_identity(folder)["digest"] == digest

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Help me with task {i}."}],
            "chosen": [{"role": "assistant", "content": "I choose to help, and here is why."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }
        for i in range(4)
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trainer"),
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=128,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok, peft_config=lora
    )
    trainer.train()
    assert trainer.state.global_step == 2
    adapter = tmp_path / "adapters" / "run-x-c0"
    trainer.model.save_pretrained(adapter)
    # what the training manifest records as its base_model block: the identity of the folder trained
    (adapter / "luthitune-manifest.json").write_text(
        json.dumps({"base_model": identity.dir_identity(folder, name=ws.config.base_model), "cycle": 0})
    )
    base = identity.adapter_base(adapter)
    assert base["digest"] == digest and base["quantization"] == "Q4_1"
    trained = identity.trained_identity(adapter)
    assert trained["digest"] == digest and trained["adapters"] == [identity.adapter_digest(adapter)]


def test_show_path_finds_the_same_cached_weights(tmp_path, store):
    root, digest = store
    blob = root / "blobs" / f"sha256-{digest[7:]}"
    with OllamaStub({"smol:latest": show_answer(digest, blob)}) as server:
        ws = workspace(tmp_path, server.url)
        ident = identity.train_identity(ws)
        assert ident["source"] == f"Ollama server {server.url}: smol:latest" and ident["digest"] == digest
        assert ident["architecture"] == "llama" and ident["quantization"] == "Q4_1"
        # the shared cache already holds this GGUF (the embedded model): content-addressed, nothing is redone
        folder = local_model_dir(ws, "ollama:smol:latest")
        assert json.loads((folder / "luthitune-source.json").read_text())["gguf_sha256"] == digest[7:]


def test_blob_not_on_this_machine_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    monkeypatch.setenv("LUTHITUNE_BASE_CACHE", str(tmp_path / "cache"))
    digest = "sha256:" + "e" * 64
    with OllamaStub({"big:latest": show_answer(digest, f"/srv/ollama/blobs/sha256-{'e' * 64}")}) as server:
        ws = workspace(tmp_path, server.url)
        with pytest.raises(BackendUnavailable) as err:
            local_model_dir(ws, "ollama:big")
    assert digest in str(err.value) and "not on this machine" in str(err.value) and "OLLAMA_MODELS" in str(err.value)
