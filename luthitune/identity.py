"""Model identity: which weights a run talks to, which it trains, and whether they are the same.

The protocol's promise is that the model that is interviewed, consents and writes the data is the model that is
trained. This module makes that checkable. An *identity* is a JSON-able dict:

- ``role``: ``chat`` (the model the protocol talks to), ``train`` (the base that is trained) or ``trained`` (that
  base plus a trained adapter); ``backend`` and ``name`` as configured.
- ``digest``: ``sha256:<hex>`` of the original weights the name resolves to: the GGUF file of the embedded model,
  the GGUF blob an Ollama model serves (``/api/show`` or Ollama's model store), or, for a plain folder of
  transformers weights, a hash over its weight files. A folder dequantized from a GGUF (the embedded cache, an
  ``ollama:`` base) has the digest of that GGUF, so an Ollama chat model and an ``ollama:`` training base compare
  equal exactly when they are the same blob. ``None`` when it cannot be determined, with ``error`` saying why.
- ``kind`` (``gguf``, ``ollama``, ``weights``, ``unknown``), ``source`` (where it was found), ``quantization``,
  ``architecture``, and ``adapters``: digests of the adapters on top (empty for a base).

API for the rest of the code:

- :func:`chat_identity`, :func:`train_identity`, :func:`model_identity`, :func:`dir_identity` → identity dicts.
- :func:`compare` → :class:`Match`; :func:`check` → :class:`IdentityCheck` (both, compared, and whether the
  configuration allows a mismatch); :func:`enforce` raises :class:`IdentityMismatch` unless allowed.
- :func:`record_run` stores both on the run (``runs`` columns); :func:`run_check` reads them back.
- :func:`adapter_base`, :func:`trained_identity` (base digest + adapter hash), :func:`trained_model_name`
  (``NAME-luthitune-cN``), :func:`trained_model` (what the next cycle should talk to), :func:`record_use`
  (which model a step talked to), :func:`record_export`, :func:`provenance` (one identity from interview to
  adapter?) and :func:`describe_run` (one plain line for the CLI, the demo and the UI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luthitune.digests import file_digest, weights_digest
from luthitune.errors import IdentityMismatch, LuthiTuneError, NotFound
from luthitune.store import Store, now
from luthitune.workspace import Workspace

SOURCE_FILE = "luthitune-source.json"
MANIFEST_FILE = "luthitune-manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# -- identities --


def _ollama_url(ws: Workspace) -> str:
    hosts = getattr(ws.config.ollama, "hosts", None)  # several Ollama servers: they serve the same models
    return hosts[0].url if hosts else ws.config.ollama.base_url


def _unknown(base: dict, error: str) -> dict:
    return {**base, "kind": "unknown", "digest": None, "source": None, "adapters": [], "error": error}


def dir_identity(folder: Path, *, name: str | None = None, role: str = "train", backend: str = "local") -> dict:
    """Identity of a folder of transformers weights as loaded: the GGUF it was dequantized from, when its
    ``luthitune-source.json`` says so, else the hash of its weight files."""
    folder = Path(folder)
    base = {"role": role, "backend": backend, "name": name or folder.name}
    info: dict = {}
    if (folder / SOURCE_FILE).exists():
        try:
            info = json.loads((folder / SOURCE_FILE).read_text())
        except ValueError:
            info = {}
    if info.get("gguf_sha256"):
        origin = (info.get("ollama_model") and f"Ollama blob of {info['ollama_model']}") or info.get("gguf_file")
        quant = info.get("quantization_type") or str(info.get("quantization", "")).split(" ")[0] or None
        return {
            **base,
            "kind": "gguf",
            "digest": "sha256:" + info["gguf_sha256"],
            "source": f"{folder} (dequantized from {origin})",
            "quantization": quant,
            "architecture": info.get("architecture"),
            "weights_dir": str(folder),
            "adapters": [],
        }
    try:
        digest = weights_digest(folder)
    except (NotFound, OSError) as exc:
        return _unknown(base, str(exc))
    cfg = folder / "config.json"
    arch = json.loads(cfg.read_text()).get("model_type") if cfg.exists() else None
    return {
        **base,
        "kind": "weights",
        "digest": digest,
        "source": str(folder),
        "quantization": None,
        "architecture": arch,
        "weights_dir": str(folder),
        "adapters": [],
    }


def _embedded_identity(ws: Workspace, base: dict) -> dict:
    from luthitune.backends.embedded import cached_dir, gguf_path, source_info

    info = source_info(ws.base_cache_dir)
    if info.get("gguf_sha256"):
        ident = dir_identity(cached_dir(ws.base_cache_dir), name=base["name"], role=base["role"])
        return {**ident, "backend": base["backend"]}
    path = gguf_path()
    return {
        **base,
        "kind": "gguf",
        "digest": file_digest(path),
        "source": f"embedded GGUF {path}",
        "quantization": "Q4_1",
        "architecture": "llama",
        "adapters": [],
    }


def model_identity(ws: Workspace, name: str, *, backend: str = "local", role: str = "chat") -> dict:
    """Identity of the model ``name`` reached through ``backend``, without loading or dequantizing anything."""
    from luthitune.backends.embedded import is_embedded
    from luthitune.backends.ollama_store import is_ollama_ref, resolve

    base = {"role": role, "backend": backend, "name": name}
    try:
        if backend == "ollama" or is_ollama_ref(name):
            m = resolve(name, _ollama_url(ws))
            return {
                **base,
                "kind": "ollama",
                "digest": m.digest,
                "source": f"{m.via}: {m.name}",
                "quantization": m.quantization,
                "architecture": m.architecture,
                "ollama_model": m.name,
                "adapters": list(m.adapters),
            }
        if backend != "local":
            return _unknown(base, f"the {backend} backend does not say which weights it serves for {name!r}")
        if is_embedded(name):
            return _embedded_identity(ws, base)
        from luthitune.backends import local_model_dir

        folder = local_model_dir(ws, name)
        return {**dir_identity(folder, name=name, role=role), "backend": backend}
    except LuthiTuneError as exc:
        return _unknown(base, str(exc))
    except OSError as exc:
        return _unknown(base, f"{type(exc).__name__}: {exc}")


def chat_identity(ws: Workspace) -> dict:
    """The model the protocol talks to (interview, consent, constitution, practice data)."""
    return model_identity(ws, ws.config.chat_model, backend=ws.config.backend, role="chat")


def train_identity(ws: Workspace) -> dict:
    """The weights that are trained (``base_model``, always loaded in-process)."""
    return model_identity(ws, ws.config.base_model, backend="local", role="train")


# -- comparison --


@dataclass(frozen=True)
class Match:
    same: bool
    verified: bool  # both digests were read (otherwise the verdict rests on the configured names)
    reason: str

    @property
    def status(self) -> str:
        return "same" if self.same else "different"


def _name_key(ident: dict) -> tuple[str, str]:
    from luthitune.backends.embedded import EMBEDDED_NAME, is_embedded
    from luthitune.backends.ollama_store import ModelRef, is_ollama_ref

    name = str(ident.get("name", "")).strip()
    try:
        if ident.get("backend") == "ollama" or is_ollama_ref(name):
            return ("ollama", ModelRef.parse(name).short)
    except LuthiTuneError:
        pass
    return ("embedded", EMBEDDED_NAME) if is_embedded(name) else ("name", name)


def short(ident: dict) -> str:
    """``ollama qwen2.5:7b (sha256:3f2c4a1b9d0e…)``."""
    digest = ident.get("digest")
    tag = f"{digest[:19]}…" if digest else "digest unknown"
    extra = f" + adapter {ident['adapters'][0][:19]}…" if ident.get("adapters") else ""
    return f"{ident.get('backend')} {ident.get('name')} ({tag}{extra})"


def compare(a: dict, b: dict) -> Match:
    """Same weights? By digest (and adapters) when both are known, else by the configured name."""
    da, db = a.get("digest"), b.get("digest")
    if da and db:
        if da != db:
            return Match(False, True, "their weights have different digests")
        if sorted(a.get("adapters") or []) != sorted(b.get("adapters") or []):
            return Match(False, True, f"the same base weights {da[:19]}…, but with different adapters on top")
        return Match(True, True, f"both are {da}")
    errors = "; ".join(dict.fromkeys(e for e in (a.get("error"), b.get("error")) if e))  # each reason once
    if _name_key(a) == _name_key(b):
        return Match(True, False, f"the same configured model; its digest could not be read ({errors})")
    return Match(False, False, f"different models are configured, and a digest could not be read: {errors}")


@dataclass
class IdentityCheck:
    chat: dict
    train: dict
    match: Match
    allow_mismatch: bool

    def summary(self) -> str:
        if self.match.same and self.match.verified:
            return f"One model: the model interviewed ({short(self.chat)}) is the model trained ({short(self.train)})."
        if self.match.same:
            return (
                f"One model by configuration: {self.chat.get('name')} is interviewed and trained; {self.match.reason}."
            )
        note = " Going on because allow_mismatch is set; the run records it." if self.allow_mismatch else ""
        return (
            f"MODEL MISMATCH: the run talks to {short(self.chat)} but trains {short(self.train)}: "
            f"{self.match.reason}.{note}"
        )


def check(ws: Workspace) -> IdentityCheck:
    """Both identities, compared, with the configuration's ``allow_mismatch``."""
    chat, train = chat_identity(ws), train_identity(ws)
    return IdentityCheck(chat, train, compare(chat, train), bool(getattr(ws.config, "allow_mismatch", False)))


def enforce(ws: Workspace, ids: IdentityCheck) -> None:
    """Refuse (``IdentityMismatch``) when the weights differ and the configuration does not allow it."""
    if ids.match.same or ids.allow_mismatch:
        return
    cfg = ws.config
    suggest = f"ollama:{cfg.chat_model}" if cfg.backend == "ollama" else cfg.chat_model
    raise IdentityMismatch(
        f"{ids.summary()}\nThe model that consents would not be the model that is trained. To train the weights the "
        f"chat model runs on, set `base_model: {suggest}` in {ws.root / 'luthitune.yaml'}; to go on anyway, set "
        "`allow_mismatch: true` there (the run records that it did)."
    )


def record_run(store: Store, run_id: str, ids: IdentityCheck) -> None:
    """Store both identities, the verdict and whether a mismatch was allowed, on the run."""
    store.upsert(
        "runs",
        {
            "id": run_id,
            "chat_identity_json": ids.chat,
            "train_identity_json": ids.train,
            "identity_match": ids.match.status,
            "identity_reason": ids.match.reason,
            "allow_mismatch": int(ids.allow_mismatch and not ids.match.same),
        },
    )


def run_check(store: Store, run_id: str) -> IdentityCheck | None:
    """The identities recorded when ``run_id`` started (None for runs started before identities were kept)."""
    row = store.get("runs", run_id)
    if not row or not row.get("chat_identity_json"):
        return None
    chat, train = json.loads(row["chat_identity_json"]), json.loads(row["train_identity_json"])
    m = Match(row["identity_match"] == "same", bool(chat.get("digest") and train.get("digest")), row["identity_reason"])
    return IdentityCheck(chat, train, m, bool(row.get("allow_mismatch")))


# -- adapters, trained models, exports and provenance --


def adapter_digest(adapter_dir: Path) -> str:
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.exists():
        raise NotFound(f"{adapter_dir} is not a LoRA adapter folder (no {ADAPTER_WEIGHTS}).")
    return file_digest(path)


def adapter_base(adapter_dir: Path) -> dict:
    """The identity of the base an adapter was trained on, from its ``luthitune-manifest.json``."""
    path = Path(adapter_dir) / MANIFEST_FILE
    if not path.exists():
        raise NotFound(
            f"{adapter_dir} has no {MANIFEST_FILE}, so its base model is unknown. Export adapters that LuthiTune "
            "trained (models/adapters/<run>-c<cycle>/)."
        )
    manifest = json.loads(path.read_text())
    block = manifest.get("base_model")
    if isinstance(block, dict) and block.get("digest"):
        return {**block, "role": "train"}
    if isinstance(block, dict):  # the training manifest's own record: source file record, weights hash, folder
        src = block.get("source") or {}
        folder = block.get("dir") or block.get("weights_dir") or manifest.get("base_model_dir")
        if src.get("gguf_sha256") or block.get("weights_sha256"):
            gguf = src.get("gguf_sha256")
            return {
                "role": "train",
                "backend": "local",
                "name": block.get("name") or src.get("name") or Path(folder or "").name,
                "kind": "gguf" if gguf else "weights",
                "digest": "sha256:" + (gguf or block["weights_sha256"]),
                "source": folder,
                "quantization": src.get("quantization_type") or (src.get("quantization") or "").split(" ")[0] or None,
                "architecture": src.get("architecture"),
                "weights_dir": folder,
                "adapters": [],
            }
    folder = (block or {}).get("dir") if isinstance(block, dict) else None
    folder = folder or manifest.get("base_model_dir")
    if folder and Path(folder).is_dir():
        return dir_identity(Path(folder))
    raise NotFound(f"{path} does not say which base the adapter was trained on (no base_model block or folder).")


def trained_identity(adapter_dir: Path, base: dict | None = None) -> dict:
    """A trained model: its base's identity plus the adapter's hash."""
    base = base or adapter_base(adapter_dir)
    return {**base, "role": "trained", "adapters": [adapter_digest(adapter_dir)], "adapter_path": str(adapter_dir)}


def trained_model_name(base_name: str, cycle: int) -> str:
    """The Ollama name of a trained model: ``NAME-luthitune-cN`` (``qwen2.5:7b`` → ``qwen2.5-7b-luthitune-c1``)."""
    import re

    from luthitune.backends.ollama_store import ModelRef, is_ollama_ref

    name = base_name.strip()
    if is_ollama_ref(name) or (":" in name and "/" not in name and not Path(name).exists()):
        ref = ModelRef.parse(name)
        stem = ref.model if ref.tag == "latest" else f"{ref.model}-{ref.tag}"
    else:
        stem = Path(name.rstrip("/")).name
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"
    return f"{stem}-luthitune-c{cycle}"


def record_use(store: Store, run_id: str, cycle: int, step: str, identity: dict, model: str | None = None) -> None:
    """Record which model a step talked to (``evaluate``, ``revise``...): base digest plus adapter hash."""
    store.upsert(
        "run_models",
        {
            "run_id": run_id,
            "cycle": cycle,
            "step": step,
            "model": model or identity.get("name"),
            "digest": identity.get("digest"),
            "adapters_json": identity.get("adapters") or [],
            "identity_json": identity,
            "created_at": now(),
        },
        pk=("run_id", "cycle", "step"),
    )


def record_export(store: Store, name: str, **fields: Any) -> None:
    store.upsert("model_exports", {"name": name, **fields, "created_at": now()}, pk="name")


@dataclass
class TrainedModel:
    identity: dict
    ollama_model: str | None  # the exported model to talk to through Ollama, when `export ollama` created one


def trained_model(store: Store, adapter_dir: Path) -> TrainedModel:
    """What the evaluation and revision of a cycle should talk to: the Ollama model `export ollama` created from
    this adapter (``NAME-luthitune-cN``) when there is one, else the adapter itself (on the same weights)."""
    ident = trained_identity(Path(adapter_dir))
    rows = store.rows("model_exports", adapter_sha256=ident["adapters"][0], created=1, order_by="created_at desc")
    return TrainedModel(ident, rows[0]["name"] if rows else None)


def provenance(store: Store, run_id: str) -> dict:
    """Every model identity a run used, step by step, and whether they are one model (one base digest)."""
    ids = run_check(store, run_id)
    steps: list[dict] = []
    if ids is not None:
        steps.append({"step": "interview, consent, constitution, practice data", "identity": ids.chat})
        steps.append({"step": "training base", "identity": ids.train})
    for tr in store.rows("training_runs", run_id=run_id, adapter_path__ne=None, order_by="cycle"):
        try:
            steps.append({"step": f"adapter c{tr['cycle']}", "identity": trained_identity(Path(tr["adapter_path"]))})
        except (LuthiTuneError, OSError, ValueError) as exc:
            steps.append(
                {"step": f"adapter c{tr['cycle']}", "identity": _unknown({"name": tr["adapter_path"]}, str(exc))}
            )
    for use in store.rows("run_models", run_id=run_id, order_by="cycle, created_at"):
        steps.append({"step": f"{use['step']} c{use['cycle']}", "identity": json.loads(use["identity_json"])})
    digests = {s["identity"].get("digest") for s in steps}
    one = bool(steps) and None not in digests and len(digests) == 1
    return {"steps": steps, "one_model": one, "digest": next(iter(digests)) if one else None}


def describe_run(store: Store, run_id: str) -> tuple[str, bool] | None:
    """One plain line about the run's model identity, and whether all is well (None: nothing recorded)."""
    ids = run_check(store, run_id)
    if ids is None:
        return None
    prov = provenance(store, run_id)
    adapters = sum(1 for s in prov["steps"] if s["step"].startswith("adapter"))
    if prov["one_model"] and adapters:
        return f"One model from interview to adapter: {prov['digest']} ({len(prov['steps'])} steps recorded).", True
    return ids.summary(), ids.match.same
