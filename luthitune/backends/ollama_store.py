"""Ollama models as weights: ``ollama:NAME[:TAG]`` resolved to the GGUF blob Ollama serves for that name.

Resolution asks the server first (``POST /api/show``: its modelfile's ``FROM`` line names the blob,
``.../blobs/sha256-<hex>``, and the answer carries the template, parameters and architecture). When no server
answers, it reads Ollama's model store: ``$OLLAMA_MODELS`` (default ``~/.ollama/models``) holds
``manifests/<host>/<namespace>/<model>/<tag>``, a JSON list of layers; the layer with media type
``application/vnd.ollama.image.model`` is the GGUF, stored as ``blobs/sha256-<hex>``, and the template, system
prompt and parameters are layers of their own.

:func:`ensure_weights` then loads that file with transformers' GGUF loader and caches it as float32 safetensors,
keyed by the blob digest (:func:`luthitune.backends.embedded.dequantize_gguf`), so training works on the very
weights the Ollama model serves, dequantized.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from luthitune.digests import file_digest
from luthitune.errors import BackendUnavailable, ConfigError, NotFound

PREFIX = "ollama:"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
_DIGEST = re.compile(r"sha256[-:]([0-9a-f]{64})")


def is_ollama_ref(name: str) -> bool:
    """``ollama:NAME[:TAG]``: weights named by the Ollama model that serves them."""
    return name.strip().lower().startswith(PREFIX)


def ollama_name(name: str) -> str:
    """The Ollama model name without the ``ollama:`` prefix."""
    name = name.strip()
    return name[len(PREFIX) :].strip() if name.lower().startswith(PREFIX) else name


@dataclass(frozen=True)
class ModelRef:
    """An Ollama model name split as the store lays it out: ``[host/][namespace/]model[:tag]``."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, name: str) -> ModelRef:
        name = ollama_name(name)
        path, tag = name, "latest"
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = name.rsplit(":", 1)
        parts = [p for p in path.split("/") if p]
        if not parts or not tag or any(p in {".", ".."} for p in [*parts, tag]):
            raise ConfigError(f"{name!r} is not an Ollama model name; use NAME or NAME:TAG, e.g. ollama:qwen2.5:7b.")
        if len(parts) == 1:
            return cls(DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0], tag)
        if len(parts) == 2:
            return cls(DEFAULT_HOST, parts[0], parts[1], tag)
        return cls(parts[0], "/".join(parts[1:-1]), parts[-1], tag)

    @property
    def short(self) -> str:
        """The name as ``ollama list`` shows it (``smol:latest``, ``user/model:tag``)."""
        prefix = "" if self.host == DEFAULT_HOST else f"{self.host}/"
        ns = "" if (self.host, self.namespace) == (DEFAULT_HOST, DEFAULT_NAMESPACE) else f"{self.namespace}/"
        return f"{prefix}{ns}{self.model}:{self.tag}"

    def manifest_path(self, root: Path) -> Path:
        return root / "manifests" / self.host / self.namespace / self.model / self.tag


def models_root() -> Path:
    """Ollama's model store: ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))


@dataclass
class OllamaModel:
    """What Ollama serves for a name: the GGUF blob (digest, and the file when it is on this machine) and the
    template, system prompt and parameters it runs it with."""

    name: str  # as `ollama list` shows it
    digest: str  # sha256:<hex> of the model layer, the GGUF
    blob: Path | None  # the GGUF file, when it is on this machine
    via: str  # where the answer came from: the server's URL or the store's folder
    manifest_digest: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)  # digests of ADAPTER layers (a fine-tuned variant)
    architecture: str | None = None
    quantization: str | None = None
    kv_heads: int | None = None  # attention.head_count_kv, from /api/show's model_info

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blob"] = str(self.blob) if self.blob else None
        return d


def _read_layer(root: Path, layers: list[dict], media: str) -> str | None:
    for layer in layers:
        if layer.get("mediaType") == media:
            path = blob_path(root, layer.get("digest", ""))
            return path.read_text(encoding="utf-8") if path.exists() else None
    return None


def from_store(name: str, root: Path | None = None) -> OllamaModel:
    """Resolve ``name`` through Ollama's model store on this machine (no server needed)."""
    root = root or models_root()
    ref = ModelRef.parse(name)
    path = ref.manifest_path(root)
    if not path.exists():
        raise NotFound(
            f"Ollama model {ref.short!r} is not in the model store at {root} (no {path}). "
            f"Pull it with `ollama pull {ref.short}`, or set OLLAMA_MODELS to the folder where Ollama keeps its models."
        )
    raw = path.read_bytes()
    try:
        layers = json.loads(raw).get("layers", [])
    except ValueError as exc:
        raise ConfigError(f"{path} is not an Ollama manifest (not JSON: {exc}). Pull the model again.") from None
    model = next((la for la in layers if la.get("mediaType") == MEDIA_MODEL), None)
    if model is None or not _DIGEST.fullmatch(str(model.get("digest", ""))):
        raise ConfigError(
            f"The Ollama manifest {path} has no model layer ({MEDIA_MODEL}); it names no weights to train. "
            f"Pull the model again with `ollama pull {ref.short}`."
        )
    digest = model["digest"]
    blob = blob_path(root, digest)
    params_text = _read_layer(root, layers, MEDIA_PARAMS)
    try:
        params = json.loads(params_text) if params_text else {}
    except ValueError:
        params = {}
    return OllamaModel(
        name=ref.short,
        digest=digest,
        blob=blob if blob.exists() else None,
        via=f"Ollama model store {root}",
        manifest_digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        template=_read_layer(root, layers, MEDIA_TEMPLATE),
        system=_read_layer(root, layers, MEDIA_SYSTEM),
        parameters=params if isinstance(params, dict) else {},
        adapters=[la["digest"] for la in layers if la.get("mediaType") == MEDIA_ADAPTER],
    )


def parse_parameters(text: str) -> dict[str, Any]:
    """``/api/show``'s ``parameters`` text (``stop "<|im_end|>"`` per line) as the params layer's JSON shape:
    repeated keys become lists, ``stop`` always is one, numbers are numbers."""
    out: dict[str, Any] = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if not key or not value:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        else:
            for cast in (int, float):
                try:
                    value = cast(value)
                    break
                except ValueError:
                    pass
        if key in out or key == "stop":
            prev = out.get(key, [])
            out[key] = [*(prev if isinstance(prev, list) else [prev]), value]
        else:
            out[key] = value
    return out


def from_server(base_url: str, name: str, timeout_s: float = 3.0) -> OllamaModel | None:
    """Ask the Ollama server at ``base_url`` what it serves for ``name``; ``None`` when no server answers.

    A server that answers but lacks the model raises :class:`BackendUnavailable` (``ollama pull``).
    """
    from luthitune.backends.ollama import missing_model

    n = ollama_name(name)
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            r = client.post("/api/show", json={"model": n})
    except (httpx.HTTPError, ConnectionError):
        return None
    if r.status_code == 404:
        raise missing_model(base_url, n)
    try:
        r.raise_for_status()
        data = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BackendUnavailable(
            f"{base_url} answered /api/show for {n!r} with HTTP {r.status_code}, not like an Ollama server ({exc})."
        ) from None
    digest = from_path = None
    adapters = []
    for line in str(data.get("modelfile", "")).splitlines():
        word, _, arg = line.strip().partition(" ")
        m = _DIGEST.search(arg)
        if word.upper() == "FROM" and digest is None and m:
            digest, from_path = "sha256:" + m.group(1), Path(arg.strip())
        elif word.upper() == "ADAPTER" and m:
            adapters.append("sha256:" + m.group(1))
    if digest is None:
        raise BackendUnavailable(
            f"Ollama at {base_url} shows no weights blob for {n!r} (its modelfile has no `FROM .../sha256-...` line), "
            "so LuthiTune cannot tell which weights it serves. Update Ollama, or configure base_model as a Hugging "
            "Face id or local folder of the same model."
        )
    blob = from_path if from_path is not None and from_path.is_file() else blob_path(models_root(), digest)
    info = data.get("model_info") or {}
    details = data.get("details") or {}
    return OllamaModel(
        name=ModelRef.parse(n).short,
        digest=digest,
        blob=blob if blob.is_file() else None,
        via=f"Ollama server {base_url}",
        template=data.get("template") or None,
        system=data.get("system") or None,
        parameters=parse_parameters(data.get("parameters", "")),
        adapters=adapters,
        architecture=info.get("general.architecture"),
        quantization=details.get("quantization_level"),
        kv_heads=info.get(f"{info.get('general.architecture')}.attention.head_count_kv"),
    )


def resolve(name: str, base_url: str | None, *, timeout_s: float = 3.0) -> OllamaModel:
    """What Ollama serves for ``name``: the server at ``base_url`` when one answers, else the model store."""
    n = ollama_name(name)
    missing: BackendUnavailable | None = None
    if base_url:
        try:
            found = from_server(base_url, n, timeout_s)
        except BackendUnavailable as exc:  # the server lacks it; the store may still have it
            found, missing = None, exc
        if found is not None:
            return found
    try:
        return from_store(n)
    except NotFound as exc:
        if missing is not None:
            raise missing from None
        where = f" No Ollama server answered at {base_url} either." if base_url else ""
        raise NotFound(f"{exc}{where} Start it with `ollama serve`.") from None


def ensure_weights(cache_root: Path, name: str, base_url: str | None) -> Path:
    """The transformers folder for ``ollama:NAME``: the GGUF blob Ollama serves, dequantized once and cached under
    ``cache_root`` by its digest. Raises a clear error when the blob is not on this machine or transformers cannot
    load its architecture."""
    from luthitune.backends.embedded import (
        check_gguf_architecture,
        dequantize_gguf,
        file_sha256,
        find_cached,
        gguf_metadata,
    )

    m = resolve(name, base_url)
    hexdigest = m.digest.removeprefix("sha256:")
    cached = find_cached(cache_root, hexdigest)
    if cached is not None:
        return cached
    if m.blob is None:
        raise BackendUnavailable(
            f"{m.via} serves {m.name} from the blob {m.digest}, but that file is not on this machine "
            f"(looked in {models_root() / 'blobs'}). Train on the machine where Ollama keeps its models, set "
            f"OLLAMA_MODELS to that folder, or run `ollama pull {m.name}` here."
        )
    meta = gguf_metadata(m.blob)
    check_gguf_architecture(meta["architecture"], f"ollama:{m.name} (blob {m.digest})")
    actual = file_sha256(m.blob)
    if actual != hexdigest:
        raise ConfigError(
            f"The Ollama blob {m.blob} does not match its name (sha256 {actual}): the file is damaged. "
            f"Run `ollama pull {m.name}` again."
        )
    info = {
        "name": f"ollama:{m.name}",
        "ollama_model": m.name,
        "blob_digest": m.digest,
        "resolved_via": m.via,
        "gguf_file": str(m.blob),
        "gguf_sha256": hexdigest,
        "architecture": meta["architecture"],
        "quantization_type": meta["quantization_type"],
        "quantization": f"{meta['quantization_type']} (dequantized to float32)",
        "tensor_types": meta["tensor_types"],
    }
    return dequantize_gguf(m.blob, cache_root / f"ollama-sha256-{hexdigest}", info)


# -- creating models through Ollama's API (what `ollama create` does with a Modelfile) --


def server_version(url: str, timeout_s: float = 3.0) -> str | None:
    """Ollama's version at ``url``, or None when nothing (or something else) answers."""
    try:
        return str(httpx.get(f"{url}/api/version", timeout=timeout_s).json()["version"])
    except (httpx.HTTPError, ConnectionError, ValueError, KeyError, TypeError):
        return None


def ollama_create(
    url: str,
    name: str,
    *,
    from_: str,
    files: dict[str, Path],
    adapters: dict[str, Path],
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
) -> str:
    """``ollama create`` through the HTTP API: upload the files as blobs, then ``POST /api/create`` (what the
    ``ollama`` command does with the Modelfile)."""
    from luthitune.backends.ollama import translate_error

    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, read=None)) as client:
            body: dict[str, Any] = {"model": name, "stream": False, "parameters": parameters}
            if files:
                body["files"] = {rel: _blob(client, path) for rel, path in files.items()}
            else:
                body["from"] = from_
            if adapters:
                body["adapters"] = {rel: _blob(client, path) for rel, path in adapters.items()}
            body.update({k: v for k, v in (("template", template), ("system", system)) if v})
            r = client.post("/api/create", json=body)
    except (httpx.HTTPError, ConnectionError) as exc:
        raise translate_error(exc, url, name) from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("error", r.text)
        except ValueError:
            detail = r.text
        raise BackendUnavailable(f"Ollama at {url} refused to create {name!r}: {detail}") from None
    return str(r.json().get("status", "success"))


def _blob(client: httpx.Client, path: Path) -> str:
    digest = file_digest(path)
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        with path.open("rb") as f:
            r = client.post(f"/api/blobs/{digest}", content=f)
        if r.status_code >= 400:
            raise BackendUnavailable(f"Ollama refused the upload of {path.name}: HTTP {r.status_code} {r.text}")
    return digest
