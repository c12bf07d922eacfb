"""Model identity: Ollama name resolution (store and /api/show), comparison, the mismatch refusal and its record,
doctor's identity rows, Modelfile rendering and the adapter checks against Ollama's import."""

import json
import textwrap

import pytest
from conftest import closed_port
from ollama_stub import CHATML_TEMPLATE, OllamaStub, add_blob, make_store, show_answer
from typer.testing import CliRunner

from luthitune import identity
from luthitune.backends import ollama_store as OS
from luthitune.cli import app
from luthitune.errors import BackendUnavailable, ConfigError, IdentityMismatch, NotFound
from luthitune.export import check_adapter_for_ollama, ollama_template, render_modelfile
from luthitune.workspace import Workspace

runner = CliRunner()
SMOL_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture
def store_root(tmp_path, monkeypatch):
    root = tmp_path / "ollama-models"
    root.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def ws_with(tmp_path, text: str) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir(exist_ok=True)
    (root / "luthitune.yaml").write_text(textwrap.dedent(text))
    return Workspace.open(root)


@pytest.mark.parametrize(
    ("name", "short", "path"),
    [
        ("ollama:smol", "smol:latest", "registry.ollama.ai/library/smol/latest"),
        ("qwen2.5:7b", "qwen2.5:7b", "registry.ollama.ai/library/qwen2.5/7b"),
        ("ollama:me/tuned:v1", "me/tuned:v1", "registry.ollama.ai/me/tuned/v1"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M", "hf.co/org/repo/Q4_K_M"),
    ],
)
def test_model_names_map_to_the_store_layout(tmp_path, name, short, path):
    ref = OS.ModelRef.parse(name)
    assert ref.short == short
    assert ref.manifest_path(tmp_path) == tmp_path / "manifests" / path


def test_store_resolution_reads_the_model_layer_template_and_params(store_root):
    digest = make_store(
        store_root, "smol", "latest", b"GGUF fake weights", template=CHATML_TEMPLATE, params={"stop": ["<|im_end|>"]}
    )
    m = OS.from_store("ollama:smol")
    assert m.digest == digest and m.blob == store_root / "blobs" / ("sha256-" + digest[7:])
    assert m.template == CHATML_TEMPLATE and m.parameters == {"stop": ["<|im_end|>"]}
    assert m.manifest_digest.startswith("sha256:") and m.via.endswith(str(store_root))
    with pytest.raises(NotFound, match="ollama pull other:latest"):
        OS.from_store("other")


def test_show_resolution_against_a_stub_server(store_root):
    blob_digest = add_blob(store_root, b"the served weights")
    blob = store_root / "blobs" / ("sha256-" + blob_digest[7:])
    with OllamaStub({"qwen2.5:7b": show_answer(blob_digest, blob)}) as server:
        m = OS.resolve("ollama:qwen2.5:7b", server.url)
        assert (m.digest, m.blob, m.via) == (blob_digest, blob, f"Ollama server {server.url}")
        assert m.parameters["stop"] == ["<|im_start|>", "<|im_end|>"] and m.parameters["temperature"] == 0.2
        assert m.architecture == "llama" and m.quantization == "Q4_1" and m.template == CHATML_TEMPLATE
        with pytest.raises(BackendUnavailable, match="ollama pull mistral"):
            OS.resolve("mistral", server.url)  # the server lacks it and so does the store
    # no server: the store answers
    digest = make_store(store_root, "qwen2.5", "7b", b"the served weights")
    m = OS.resolve("qwen2.5:7b", f"http://127.0.0.1:{closed_port()}")
    assert m.digest == digest == blob_digest and "model store" in m.via


def test_parameters_text_parses_like_the_params_layer():
    text = 'stop                           "<|im_start|>"\nstop "<|im_end|>"\nnum_ctx 4096\ntemperature 0.7'
    assert OS.parse_parameters(text) == {"stop": ["<|im_start|>", "<|im_end|>"], "num_ctx": 4096, "temperature": 0.7}


def test_unsupported_gguf_architecture_names_what_is_supported(tmp_path, store_root):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    w = GGUFWriter(str(path), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    make_store(store_root, "odd", "latest", path)
    with pytest.raises(ConfigError) as err:
        OS.ensure_weights(tmp_path / "cache", "ollama:odd", None)
    msg = str(err.value)
    assert "'rwkv6'" in msg and "llama" in msg and "qwen2" in msg and "Hugging Face model id or a local folder" in msg
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_compare_by_digest_adapters_and_names():
    a = {"backend": "ollama", "name": "qwen2.5:7b", "digest": "sha256:" + "a" * 64, "adapters": []}
    b = {"backend": "local", "name": "ollama:qwen2.5:7b", "digest": "sha256:" + "a" * 64, "adapters": []}
    assert identity.compare(a, b).same and identity.compare(a, b).verified
    assert not identity.compare(a, {**b, "digest": "sha256:" + "b" * 64}).same
    assert not identity.compare(a, {**b, "adapters": ["sha256:" + "c" * 64]}).same
    unknown = {**b, "digest": None, "error": "server down"}
    m = identity.compare(a, unknown)
    assert m.same and not m.verified and "server down" in m.reason  # the same configured model
    m = identity.compare(a, {**unknown, "name": "unsloth/llama-3-8b"})
    assert not m.same and "server down" in m.reason


def test_embedded_identity_is_the_gguf_digest(workspace):
    from luthitune.backends.embedded import gguf_path

    ids = identity.check(workspace)
    assert ids.match.same and ids.match.verified
    assert ids.chat["digest"] == ids.train["digest"] == identity.file_digest(gguf_path())
    assert "One model" in ids.summary()


def test_mismatch_refuses_to_start_and_allow_mismatch_is_recorded(tmp_path, store_root):
    from luthitune.protocol import Protocol

    digest = add_blob(store_root, b"qwen weights")
    with OllamaStub({"qwen2.5:7b": show_answer(digest, "/elsewhere/blobs/sha256-" + digest[7:])}) as server:
        cfg = f"backend: ollama\nchat_model: qwen2.5:7b\nollama:\n  base_url: {server.url}\n"
        ws = ws_with(tmp_path, cfg)
        with pytest.raises(IdentityMismatch) as err:
            Protocol(ws).start()
        assert "MODEL MISMATCH" in str(err.value) and "base_model: ollama:qwen2.5:7b" in str(err.value)
        assert "allow_mismatch: true" in str(err.value) and err.value.exit_code == 2
        r = runner.invoke(app, ["run", "-w", str(ws.root)], terminal_width=400)
        assert r.exit_code == 2 and "MODEL MISMATCH" in r.output
        assert Protocol(ws).runs() == []  # nothing started

        ws = ws_with(tmp_path, cfg + "allow_mismatch: true\n")
        p = Protocol(ws)
        run = p.start()
        row = p.run_row(run)
        assert row["identity_match"] == "different" and row["allow_mismatch"] == 1
        assert json.loads(row["chat_identity_json"])["digest"] == digest
        assert json.loads(row["train_identity_json"])["name"] == "smollm2-135m-instruct"
        r = runner.invoke(app, ["status", run, "-w", str(ws.root)], terminal_width=400)
        assert r.exit_code == 0 and "warning" in r.output and "MODEL MISMATCH" in r.output
        assert "allow_mismatch is set" in r.output

        # the same weights: the Ollama chat model and an ollama: training base resolve to one blob
        ws = ws_with(tmp_path, cfg + "base_model: ollama:qwen2.5:7b\n")
        p = Protocol(ws)
        run = p.start()
        row = p.run_row(run)
        assert row["identity_match"] == "same" and row["allow_mismatch"] == 0
        assert json.loads(row["train_identity_json"])["digest"] == digest
        r = runner.invoke(app, ["doctor", "-w", str(ws.root)], terminal_width=400)
        assert r.exit_code == 0, r.output
        from luthitune.doctor import identity_checks

        rows = {c.name: c for c in identity_checks(ws)}
        assert digest in rows["chat model identity"].detail and digest in rows["training base identity"].detail
        assert rows["one model"].ok and "the model interviewed is the model trained" in rows["one model"].detail


def test_doctor_fails_on_a_mismatch(tmp_path, store_root):
    digest = add_blob(store_root, b"qwen weights")
    with OllamaStub({"qwen2.5:7b": show_answer(digest, "/x/sha256-" + digest[7:])}) as server:
        ws = ws_with(tmp_path, f"backend: ollama\nchat_model: qwen2.5:7b\nollama:\n  base_url: {server.url}\n")
        r = runner.invoke(app, ["doctor", "-w", str(ws.root)], terminal_width=400)
    assert r.exit_code == 1 and "different weights" in r.output and "allow_mismatch" in r.output


def test_trained_model_names():
    assert identity.trained_model_name("ollama:qwen2.5:7b", 1) == "qwen2.5-7b-luthitune-c1"
    assert identity.trained_model_name("smol:latest", 0) == "smol-luthitune-c0"
    assert identity.trained_model_name("smollm2-135m-instruct", 2) == "smollm2-135m-instruct-luthitune-c2"


def test_chatml_template_translates_to_ollama_go_template():
    template, system, stops = ollama_template(SMOL_JINJA)
    assert template == CHATML_TEMPLATE
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert stops == ["<|im_start|>", "<|im_end|>"]
    assert ollama_template("{{ messages }}") == (None, None, [])
    text = render_modelfile(
        from_="smol:latest",
        adapter="./adapter",
        template=template,
        system=system,
        parameters={"stop": stops, "temperature": 0.7},
        comments=["made here"],
    )
    assert text.splitlines()[:3] == ["# made here", "FROM smol:latest", "ADAPTER ./adapter"]
    assert f'TEMPLATE """{template}"""' in text and f'SYSTEM """{system}"""' in text
    assert 'PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\nPARAMETER temperature 0.7\n' in text


def _adapter(folder, names, **cfg):
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({n: torch.zeros(2, 2) for n in names}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **cfg}))
    return folder


def test_adapter_files_checked_against_ollamas_import(tmp_path):
    good = [
        f"base_model.model.model.layers.0.{m}.lora_{ab}.weight"
        for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")
        for ab in "AB"
    ]
    assert check_adapter_for_ollama(_adapter(tmp_path / "ok", good), "llama") == []
    assert "architecture is 'qwen2'" in check_adapter_for_ollama(tmp_path / "ok", "qwen2")[0]
    bad = _adapter(
        tmp_path / "bad",
        [*good, "base_model.model.lm_head.lora_A.weight"],
        lora_alpha=8.5,
        use_rslora=True,
        modules_to_save=["lm_head"],
    )
    problems = " | ".join(check_adapter_for_ollama(bad, "llama"))
    for expected in ("lora_alpha is 8.5", "use_rslora", "modules_to_save", "lm_head.lora_A"):
        assert expected in problems
    (tmp_path / "empty").mkdir()
    assert "adapter_config.json is missing" in check_adapter_for_ollama(tmp_path / "empty", "llama")


def test_provenance_shows_one_model_from_interview_to_adapter(workspace, tmp_path):
    from luthitune.protocol import Protocol

    p = Protocol(workspace)
    run = p.start()
    base = identity.train_identity(workspace)
    adapter = _adapter(tmp_path / "run-c0", ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    (adapter / "luthitune-manifest.json").write_text(json.dumps({"base_model": base, "cycle": 0}))
    p.store.upsert(
        "training_runs",
        {"id": f"{run}:c0:train", "run_id": run, "cycle": 0, "adapter_path": str(adapter), "status": "done"},
    )
    trained = identity.trained_identity(adapter)
    assert trained["digest"] == base["digest"] and trained["adapters"] == [identity.adapter_digest(adapter)]
    identity.record_use(p.store, run, 0, "revise", trained, model="smollm2-135m-instruct-luthitune-c0")

    prov = identity.provenance(p.store, run)
    assert prov["one_model"] and prov["digest"] == base["digest"]
    assert [s["step"] for s in prov["steps"]] == [
        "interview, consent, constitution, practice data",
        "training base",
        "adapter c0",
        "revise c0",
    ]
    line, ok = identity.describe_run(p.store, run)
    assert ok and line.startswith(f"One model from interview to adapter: {base['digest']}")

    identity.record_use(p.store, run, 0, "evaluate", {**trained, "digest": "sha256:" + "f" * 64})
    assert not identity.provenance(p.store, run)["one_model"]


def test_adapter_base_reads_the_training_manifests_own_record(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    block = {
        "name": "ollama:smol",
        "dir": "/cache/ollama-sha256-ab",
        "source": {"gguf_sha256": "ab" * 32, "quantization": "Q4_1 (dequantized to float32)"},
        "weights_sha256": "cd" * 32,
    }
    (folder / "luthitune-manifest.json").write_text(json.dumps({"base_model": block}))
    base = identity.adapter_base(folder)
    assert base["digest"] == "sha256:" + "ab" * 32 and base["quantization"] == "Q4_1" and base["name"] == "ollama:smol"
    with pytest.raises(NotFound, match=r"no luthitune-manifest\.json"):
        identity.adapter_base(tmp_path)


def test_digests_are_a_leaf_module_the_backends_hash_with(tmp_path):
    import hashlib
    import subprocess
    import sys

    from luthitune.digests import file_digest, weights_digest

    code = "import sys, luthitune.digests; print(sorted(m for m in sys.modules if m.startswith('luthitune.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['luthitune.digests', 'luthitune.errors']"  # no loop back through identity or config
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    want = hashlib.sha256(b"a.safetensors" + b"first" + b"b.safetensors" + b"second").hexdigest()
    assert weights_digest(tmp_path) == "sha256:" + want
    assert json.loads((tmp_path / ".luthitune-weights-sha256.json").read_text())["sha256"] == want
    assert file_digest(tmp_path / "a.safetensors") == "sha256:" + hashlib.sha256(b"first").hexdigest()
