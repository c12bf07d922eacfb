"""LuthiTune's files written the way the tools they go to read them.

- **A merged model's ``config.json``.** transformers 5 keeps the RoPE settings only under ``rope_parameters``.
  Ollama's llama converter reads a top-level ``rope_theta`` (and converts with a base of 10000 without it, which
  silently breaks the model) and ``rope_scaling``; llama.cpp's ``convert_hf_to_gguf.py`` reads either spelling;
  loaders written for transformers 4 read ``torch_dtype``. :func:`converter_config` writes both spellings, with the
  same values.
- **A trained adapter's ``adapter_config.json`` and ``README.md`` card.** PEFT records the base as the folder it was
  loaded from, a cache path that exists on this machine only. :func:`portable_adapter` records what identifies the
  base anywhere: its Hugging Face hub id when known, else the digest of the GGUF it was dequantized from (or of its
  weight files).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Keys of the transformers-4 spelling that the converters read (Ollama's convert/convert_llama.go, llama.cpp's
# convert_hf_to_gguf.py, TextModel.__init__ and set_gguf_parameters).
LEGACY_ROPE_KEYS = ("rope_theta", "rope_scaling")
_HUB_CACHE = re.compile(r"models--([A-Za-z0-9][\w.-]*)--([\w.-]+)")


def converter_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a ``config.json``'s content) with ``rope_theta`` / ``rope_scaling`` / ``torch_dtype`` at the top
    level as well, taken from ``rope_parameters`` / ``dtype``; keys already there are kept."""
    out = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            out.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind and kind != "default":  # linear, dynamic, yarn, llama3...: Ollama reads "type" and "rope_type"
            out.setdefault("rope_scaling", {**scaling, "rope_type": kind, "type": kind})
    if "dtype" in config:
        out.setdefault("torch_dtype", config["dtype"])
    return out


def write_converter_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    config = converter_config(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config


def hub_id(base: dict[str, Any]) -> str | None:
    """The base's Hugging Face hub id when it is known for certain: weights loaded from the hub's cache
    (``.../models--ORG--NAME/snapshots/...``). None for GGUF and Ollama bases (their weights are a quantized file, not
    the hub's release) and for local folders, whose ``_name_or_path`` may name anything they were saved from."""
    if base.get("kind") not in ("weights", None):
        return None
    for text in (base.get("weights_dir"), base.get("dir"), base.get("source")):
        m = _HUB_CACHE.search(str(text or ""))
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def portable_name(base: dict[str, Any]) -> str:
    """What identifies the base on any machine: the hub id, else its digest (``sha256:...`` of the GGUF or of the
    weight files), else its name."""
    return hub_id(base) or base.get("digest") or str(base.get("name") or "unknown")


def portable_adapter(adapter_dir: Path, base: dict[str, Any]) -> str:
    """Record the base's portable identity in ``adapter_config.json`` and in the ``README.md`` card (for PEFT and the
    hub), instead of the local folder the base was loaded from. Returns what was recorded."""
    from huggingface_hub import ModelCard, ModelCardData

    adapter_dir = Path(adapter_dir)
    name = portable_name(base)
    cfg_path = adapter_dir / "adapter_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = name
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card_path = adapter_dir / "README.md"
    card = ModelCard.load(card_path) if card_path.exists() else ModelCard.from_template(ModelCardData())
    hub = hub_id(base)
    # The card's base_model (and PEFT's base_model:adapter:... tag) is a hub id by definition: a digest goes in the
    # text instead.
    card.data.base_model = hub
    tags = [t for t in card.data.tags or [] if not str(t).startswith("base_model:")]
    card.data.tags = [*tags, f"base_model:adapter:{hub}"] if hub else tags or None
    quant = f", {base['quantization']}" if base.get("quantization") else ""
    what = {"gguf": "the GGUF file it was dequantized from", "ollama": "the GGUF blob Ollama serves"}.get(
        str(base.get("kind")), "its weight files"
    )
    section = (
        "## Base model (LuthiTune)\n\n"
        f"Trained by LuthiTune on `{base.get('name')}`{quant}: {hub or base.get('digest')}"
        + ("" if hub else f" (the sha256 of {what})")
        + ". `luthitune-manifest.json` has the full identity, the dataset and the training configuration.\n"
    )
    text = re.sub(r"\n## Base model \(LuthiTune\)\n.*?(?=\n## |\Z)", "\n", card.text, flags=re.S).rstrip()
    card.text = f"{text}\n\n{section}"
    card.save(card_path)
    return name
