"""``luthitune export ollama``: serve a trained adapter with Ollama, in one of two modes.

- **adapter**: a Modelfile ``FROM <the base>`` plus ``ADAPTER ./adapter`` (a folder holding exactly
  ``adapter_model.safetensors`` and ``adapter_config.json``, which Ollama converts itself). For an ``ollama:`` base
  the ``FROM`` is that very Ollama model, so the model served is the blob that was interviewed plus the adapter
  trained on its (dequantized) weights. Ollama's converter takes bases whose GGUF architecture is ``llama`` or
  ``gemma2`` (its documentation: Llama 2/3/3.1/3.2, Mistral, Gemma 1/2), LoRA on the attention and MLP projections
  only, ``lora_alpha`` a whole number, no DoRA and no rsLoRA scaling: :func:`check_adapter_for_ollama`.
- **merged**: the adapter merged into the base (the dequantized weights it was trained on), saved as float16
  safetensors in ``models/merged/NAME/`` with a Modelfile ``FROM .``. Ollama imports Llama, Mistral, Gemma and
  Phi3 safetensors; it then serves float16 weights (or what ``ollama create --quantize`` makes of them), not the
  original quantized blob. The fallback for everything adapter mode does not take.

The Modelfile's ``TEMPLATE`` comes from the Ollama model for ``ollama:`` bases (``/api/show`` or the store's
template layer), else from the base's Jinja chat template (ChatML, Llama 3 and Gemma are translated to Ollama's
Go-template syntax). ``ollama create`` runs through Ollama's HTTP API when the server answers; otherwise the
command is printed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luthitune import identity
from luthitune.backends import ollama_store
from luthitune.errors import LuthiTuneError, NotFound, UsageError
from luthitune.portable import write_converter_config
from luthitune.store import Store
from luthitune.workspace import Workspace

OLLAMA_ADAPTER_ARCHITECTURES = ("llama", "gemma2")  # Ollama's convert.ConvertAdapter
_LORA_TENSOR = re.compile(
    r"base_model\.model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.lora_[AB]\.weight"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what Ollama's adapter import reads
BASE_GGUF = "base.gguf"  # adapter mode on a GGUF base: the base, inside the export folder
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
HF_OPTIONAL = ("special_tokens_map.json", "tokenizer.model")

# -- the chat template, in Ollama's Go-template syntax --

FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    # marker in the Jinja template: (Go template, default-system pattern, stop strings)
    "<|im_start|>": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        r"<\|im_start\|>system(?:\n|\\n)([^{}<]+?)<\|im_end\|>",
        ["<|im_start|>", "<|im_end|>"],
    ),
    "<|start_header_id|>": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        r"<\|start_header_id\|>system<\|end_header_id\|>(?:\n|\\n)+([^{}<]+?)<\|eot_id\|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "<start_of_turn>": (
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        r"$^",
        ["<start_of_turn>", "<end_of_turn>"],
    ),
}


def ollama_template(chat_template: str | None) -> tuple[str | None, str | None, list[str]]:
    """(TEMPLATE, default SYSTEM, stop strings) for a Jinja chat template of a known format; Nones otherwise."""
    for marker, (template, system_re, stops) in FAMILIES.items():
        if chat_template and marker in chat_template:
            m = re.search(system_re, chat_template, re.S)
            return template, (m.group(1).strip() if m else None), list(stops)
    return None, None, []


def read_chat_template(*folders: Path) -> str | None:
    """The Jinja chat template saved with a tokenizer (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    for folder in folders:
        if (folder / "chat_template.jinja").exists():
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        cfg = folder / "tokenizer_config.json"
        if cfg.exists():
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def render_modelfile(
    *,
    from_: str,
    adapter: str | None = None,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    comments: list[str] = (),  # type: ignore[assignment]
) -> str:
    """An Ollama Modelfile (``FROM``, ``ADAPTER``, ``TEMPLATE``, ``SYSTEM``, one ``PARAMETER`` line per value)."""
    for text in (template, system):
        if text and '"""' in text:
            raise UsageError('The chat template or system prompt contains """, which a Modelfile cannot quote.')
    lines = [f"# {c}" for c in comments] + [f"FROM {from_}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in (parameters or {}).items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


# -- the adapter, checked against what Ollama's import takes --


def check_adapter_for_ollama(adapter_dir: Path, architecture: str | None) -> list[str]:
    """What Ollama's safetensors-adapter import would refuse or get wrong in ``adapter_dir`` (empty: nothing)."""
    from safetensors import safe_open

    problems: list[str] = []
    if architecture not in OLLAMA_ADAPTER_ARCHITECTURES:
        problems.append(
            f"the base's architecture is {architecture!r}; Ollama converts adapters only for "
            f"{' and '.join(OLLAMA_ADAPTER_ARCHITECTURES)} bases"
        )
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / identity.ADAPTER_WEIGHTS
    for path in (cfg_path, weights):
        if not path.exists():
            problems.append(f"{path.name} is missing")
    if problems and not (cfg_path.exists() and weights.exists()):
        return problems
    others = sorted(p.name for p in adapter_dir.glob("*.safetensors") if p != weights)
    if others:
        problems.append(f"other safetensors files ({', '.join(others)}) would be read as adapter tensors too")
    cfg = json.loads(cfg_path.read_text())
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}, not LORA")
    alpha = cfg.get("lora_alpha")
    if not isinstance(alpha, int) or isinstance(alpha, bool) or alpha <= 0:
        problems.append(f"lora_alpha is {alpha!r}; Ollama reads it as a positive whole number")
    for key, why in (
        ("use_dora", "DoRA adapters are not converted"),
        ("use_rslora", "Ollama scales by lora_alpha / r, not rsLoRA's lora_alpha / sqrt(r)"),
        ("modules_to_save", "fully trained extra modules are not converted"),
        ("alpha_pattern", "Ollama applies one lora_alpha to every layer"),
    ):
        if cfg.get(key):
            problems.append(f"{key} is set: {why}")
    with safe_open(str(weights), framework="pt") as f:
        names = list(f.keys())
    stray = [n for n in names if not _LORA_TENSOR.fullmatch(n)]
    if not names:
        problems.append(f"{weights.name} holds no tensors")
    elif stray:
        problems.append(
            f"{len(stray)} tensor(s) Ollama's converter cannot place (it maps LoRA on the q/k/v/o and gate/up/down "
            f"projections only), e.g. {stray[0]}"
        )
    return problems


# -- the export --


@dataclass
class ExportResult:
    name: str
    mode: str
    folder: Path
    modelfile: Path
    command: str
    url: str
    created: bool = False
    reachable: bool = False
    status: str = ""
    notes: list[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)


def resolve_adapter(ws: Workspace, adapter: str) -> Path:
    """An adapter folder given as a path or as a name under ``models/adapters/``."""
    for candidate in (Path(adapter).expanduser(), ws.root / adapter, ws.models_dir / "adapters" / adapter):
        if (candidate / identity.ADAPTER_WEIGHTS).exists():
            return candidate.resolve()
    names = sorted(p.parent.name for p in (ws.models_dir / "adapters").glob(f"*/{identity.ADAPTER_WEIGHTS}"))
    raise NotFound(
        f"No adapter {adapter!r}: neither a folder with {identity.ADAPTER_WEIGHTS} nor a name under "
        f"{ws.models_dir / 'adapters'}." + (f" Adapters there: {', '.join(names)}." if names else "")
    )


def ollama_url(ws: Workspace) -> str:
    hosts = getattr(ws.config.ollama, "hosts", None)
    return hosts[0].url if hosts else ws.config.ollama.base_url


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def adapter_cycle(manifest: dict, adapter_dir: Path) -> int:
    if isinstance(manifest.get("cycle"), int):
        return manifest["cycle"]
    m = re.search(r"-c(\d+)$", adapter_dir.name)
    return int(m.group(1)) if m else 0


def base_format(ws: Workspace, base: dict, adapter_dir: Path, weights: Path | None):
    """(template, system, parameters, Ollama model or None) for the exported model."""
    from luthitune.backends.ollama_store import resolve

    served = None
    if base.get("kind") == "ollama":
        try:
            served = resolve(base.get("ollama_model") or base["name"], ollama_url(ws))
        except LuthiTuneError:
            served = None
    jinja = read_chat_template(adapter_dir, *([weights] if weights else []))
    template, system, stops = ollama_template(jinja)
    params: dict[str, Any] = {}
    if served is not None:
        template, system = served.template or template, served.system or system
        params.update(served.parameters)
    if stops and "stop" not in params:
        params["stop"] = stops
    s = ws.config.sampling  # how the protocol talked to the model
    params.update({"temperature": s.temperature, "top_p": s.top_p, "repeat_penalty": s.repetition_penalty})
    return template, system, params, served


def training_length(manifest: dict) -> int | None:
    """The longest sequence (prompt + answer, tokens) the adapter was trained on: TRL's ``max_length``, else the
    hyperparameters' ``max_seq_length``."""
    config = manifest.get("config") or {}
    hyper = (config.get("hyperparameters") or {}).get("model") or {}
    for value in ((config.get("dpo") or {}).get("max_length"), hyper.get("max_seq_length")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def weights_dir(ws: Workspace, base: dict) -> Path:
    """The folder of base weights the adapter was trained on (dequantized, for GGUF and Ollama bases)."""
    from luthitune.backends import local_model_dir
    from luthitune.backends.ollama_store import ollama_name

    folder = base.get("weights_dir")
    if folder and Path(folder).is_dir():
        return Path(folder)
    if base.get("kind") == "ollama":
        return local_model_dir(ws, "ollama:" + ollama_name(base.get("ollama_model") or base["name"]))
    return local_model_dir(ws, base["name"])


def check_weights(base: dict, weights: Path) -> None:
    """The base weights found are the ones the adapter was trained on (by digest), or a clear error."""
    found = identity.dir_identity(weights).get("digest")
    if found != base.get("digest"):
        raise UsageError(
            f"The adapter was trained on {base.get('digest')}, but the base weights at {weights} are {found}. "
            "Export from the workspace (and base cache) it was trained in."
        )


def _gguf_file(base: dict) -> Path | None:
    from luthitune.backends.embedded import gguf_path, is_embedded

    if is_embedded(str(base.get("name", ""))):
        return gguf_path()
    source = Path(base.get("weights_dir") or "") / identity.SOURCE_FILE
    if base.get("weights_dir") and source.exists():
        path = Path(json.loads(source.read_text()).get("gguf_file") or "")
        return path if path.is_absolute() and path.exists() else None
    return None


def export_ollama(
    ws: Workspace,
    adapter: str,
    name: str | None = None,
    *,
    mode: str | None = None,
    create: bool | None = None,
    store: Store | None = None,
) -> ExportResult:
    """Write the Modelfile (and the adapter folder or merged weights) for ``adapter``; run ``ollama create`` when
    ``create`` (default: when the server answers). Records the export with its identity (base digest + adapter)."""
    adapter_dir = resolve_adapter(ws, adapter)
    base = identity.adapter_base(adapter_dir)
    trained = identity.trained_identity(adapter_dir, base)
    manifest = json.loads((adapter_dir / identity.MANIFEST_FILE).read_text())
    cycle = adapter_cycle(manifest, adapter_dir)
    name = name or identity.trained_model_name(str(base.get("ollama_model") or base.get("name")), cycle)
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid Ollama model name (letters, digits, . _ - /, and one :TAG).")
    mode = mode or ("adapter" if base.get("kind") == "ollama" else "merged")
    if mode not in ("adapter", "merged"):
        raise UsageError(f"Unknown mode {mode!r}: use adapter or merged.")
    url = ollama_url(ws)
    weights = None if mode == "adapter" and base.get("kind") == "ollama" else weights_dir(ws, base)
    if weights is not None:
        check_weights(base, weights)
    template, system, params, served = base_format(ws, base, adapter_dir, weights)
    if (length := training_length(manifest)) is not None:
        params["num_ctx"] = length
    notes = []
    quant = base.get("quantization")
    if mode == "adapter":
        folder, from_, upload = _adapter_files(ws, name, adapter_dir, base, served, weights)
        if quant:
            notes.append(
                f"Ollama applies the adapter to the original {quant} weights ({base.get('digest')}); it was trained "
                "on their dequantized float32 copy, so the served model differs from the evaluated one by the "
                "base's quantization error."
            )
    else:
        folder, from_, upload = merged_files(ws, name, adapter_dir, weights)
        if base.get("kind") in ("gguf", "ollama"):
            notes.append(
                f"The base came from a {quant or 'quantized'} GGUF ({base.get('digest')}), dequantized to float32 "
                "for training; the merged model is saved in float16 and Ollama serves those weights, not the "
                f"original {quant or 'quantized'} file. `ollama create --quantize q4_K_M` quantizes them again "
                "(a new quantization, not the original blob)."
            )
    if template is None:
        notes.append("No chat template recognised: Ollama takes the template from the model's own metadata.")
    comments = [
        f"Written by `luthitune export ollama` ({mode} mode) for {adapter_dir}",
        f"Base: {base.get('name')} = {base.get('digest')}; adapter {trained['adapters'][0]}",
    ]
    text = render_modelfile(
        from_=from_,
        adapter="./adapter" if mode == "adapter" else None,
        template=template,
        system=system,
        parameters=params,
        comments=comments,
    )
    modelfile = folder / "Modelfile"
    modelfile.write_text(text, encoding="utf-8")
    host = "" if url == "http://127.0.0.1:11434" else f"OLLAMA_HOST={url} "
    result = ExportResult(name, mode, folder, modelfile, f"{host}ollama create {name} -f {modelfile}", url)
    result.notes, result.identity = notes, trained
    version = ollama_store.server_version(url)
    result.reachable = version is not None
    if create is None:
        create = version is not None
    if create:
        if version is None:
            from luthitune.backends.ollama import unreachable

            raise unreachable(url, name, "GET /api/version failed")
        adapters = {f: folder / "adapter" / f for f in ADAPTER_FILES} if mode == "adapter" else {}
        result.status = ollama_store.ollama_create(
            url,
            name,
            from_=from_,
            files=upload,
            adapters=adapters,
            template=template,
            system=system,
            parameters=params,
        )
        result.created = True
    store = store or Store(ws.db_path)
    identity.record_export(
        store,
        name,
        mode=mode,
        run_id=manifest.get("run_id"),
        cycle=cycle,
        adapter_path=str(adapter_dir),
        adapter_sha256=trained["adapters"][0],
        base_digest=base.get("digest"),
        identity_json=trained,
        folder=str(folder),
        modelfile=str(modelfile),
        ollama_url=url,
        created=int(result.created),
    )
    return result


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _adapter_files(ws, name, adapter_dir, base, served, weights):
    """Adapter mode: ``models/ollama/NAME/adapter/`` with the two files Ollama reads; (folder, FROM, uploads)."""
    from luthitune.errors import ConfigError

    arch = base.get("architecture") or (served.architecture if served else None)
    if arch is None and weights is not None and (weights / "config.json").exists():
        arch = json.loads((weights / "config.json").read_text()).get("model_type")
    problems = check_adapter_for_ollama(adapter_dir, arch)
    if problems:
        raise UsageError(
            f"Ollama's adapter import would not take {adapter_dir}:\n  - "
            + "\n  - ".join(problems)
            + "\nExport it merged instead: `luthitune export ollama NAME --adapter ... --mode merged`."
        )
    folder = fresh(ws.models_dir / "ollama" / slug(name))
    (folder / "adapter").mkdir()
    for f in ADAPTER_FILES:
        shutil.copyfile(adapter_dir / f, folder / "adapter" / f)
    kv_heads = _kv_heads(ws, base, served, weights)
    if kv_heads:
        # Ollama's llama adapter converter re-orders the k_proj LoRA by key-value heads, and reads their number
        # from adapter_config.json only (PEFT does not write it): without it, grouped-query models (Llama 3,
        # SmolLM2, Qwen) would be re-ordered by the query heads.
        cfg_path = folder / "adapter" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["num_key_value_heads"] = int(kv_heads)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    upload: dict[str, Path] = {}
    if base.get("kind") == "ollama":
        from_ = base.get("ollama_model") or base["name"]
    elif (gguf := _gguf_file(base)) is not None:
        # A link (or a copy) inside the export folder: the original may live in a venv's site-packages, which a
        # reinstall replaces. A hard link keeps the file itself, whatever happens to its first name.
        local = folder / BASE_GGUF
        try:
            local.hardlink_to(gguf)
        except OSError:
            shutil.copyfile(gguf, local)
        from_, upload = f"./{BASE_GGUF}", {"model.gguf": local}
    elif weights is not None:
        from_ = str(weights)
        upload = {p.name: p for p in weights.glob("*.safetensors")}
        upload.update({f: weights / f for f in (*HF_FILES, *HF_OPTIONAL) if (weights / f).exists()})
    else:  # pragma: no cover - a non-Ollama base always has weights
        raise ConfigError(f"No base weights found for {base.get('name')}.")
    return folder, from_, upload


def _kv_heads(ws: Workspace, base: dict, served, weights: Path | None) -> int | None:
    """The base's number of key-value heads: its config (the trained folder, or the cache of its digest), else
    what Ollama reports."""
    from luthitune.backends.embedded import find_cached

    folders = [weights] if weights is not None else []
    if base.get("digest"):
        folders.append(find_cached(ws.base_cache_dir, base["digest"]))
    for folder in folders:
        if folder is not None and (folder / "config.json").exists():
            cfg = json.loads((folder / "config.json").read_text())
            if cfg.get("num_key_value_heads") or cfg.get("num_attention_heads"):
                return cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
    return served.kv_heads if served is not None else None


def merged_files(ws, name, adapter_dir, weights):
    """Merged mode: the adapter merged into the base, as float16 safetensors in ``models/merged/NAME/``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from luthitune.logs import quiet_transformers

    quiet_transformers()
    target = ws.models_dir / "merged" / slug(name)
    tmp = fresh(target.with_name(target.name + ".partial"))
    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    write_converter_config(tmp)  # rope_theta etc. where Ollama's and llama.cpp's converters read them
    has_tokenizer = (adapter_dir / "tokenizer.json").exists() or (adapter_dir / "tokenizer_config.json").exists()
    AutoTokenizer.from_pretrained(str(adapter_dir if has_tokenizer else weights)).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    upload = {p.name: p for p in target.glob("*.safetensors")}
    upload.update({f: target / f for f in (*HF_FILES, *HF_OPTIONAL) if (target / f).exists()})
    return target, ".", upload
