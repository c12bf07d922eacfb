"""Digests of model files: ``sha256:<hex>`` of one file or of a transformers folder's weights.

A leaf module (nothing of LuthiTune's but its errors): the backends, the training manifests and the model identities
(:mod:`luthitune.identity`) all hash weights the same way without importing each other. Digests are cached by path,
size and modification time, so a model folder is hashed once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from luthitune.errors import NotFound

_HASHES: dict[str, str] = {}


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of one file, remembered while its size and modification time stay the same."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        _HASHES[key] = "sha256:" + h.hexdigest()
    return _HASHES[key]


def weights_digest(folder: Path) -> str:
    """``sha256:<hex>`` over a transformers folder's weight files: each file's name then its bytes, in name order
    (``*.safetensors``, else ``*.bin``). Remembered in memory and beside the files (``.luthitune-weights-sha256.json``)
    while their sizes and modification times stay the same, so a large model is hashed once, not per process."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise NotFound(f"{folder} holds no weight files (*.safetensors or *.bin).")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    key = f"{folder.resolve()}|{stamp}"
    if key in _HASHES:
        return _HASHES[key]
    sidecar = folder / ".luthitune-weights-sha256.json"
    try:
        saved = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    except ValueError:
        saved = {}
    if saved.get("files") == stamp and saved.get("sha256"):
        _HASHES[key] = "sha256:" + saved["sha256"]
        return _HASHES[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    _HASHES[key] = "sha256:" + h.hexdigest()
    try:
        sidecar.write_text(json.dumps({"files": stamp, "sha256": h.hexdigest()}))
    except OSError:  # a read-only model folder: hash again in the next process
        pass
    return _HASHES[key]
