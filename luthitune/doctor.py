"""``luthitune doctor``: what works on this machine, and what to run where something does not."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from luthitune.workspace import Workspace


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _server_checks(ws: Workspace) -> list[Check]:
    """The ollama or openai backend: every host reachable and serving the model. With several hosts, one that
    fails is a warning as long as another works (the pool routes around it); all failing is a failure."""
    cfg = ws.config
    hosts = cfg.hosts()
    many = len(hosts) > 1
    checks: list[Check] = []
    if cfg.backend == "openai":
        import os

        env = cfg.openai.api_key_env
        state = "set" if os.environ.get(env) else "not set (fine for a server started without --api-key)"
        checks.append(Check("API key", True, f"from ${env}: {state}", required=False))
    for h in hosts:
        name = f"{cfg.backend} host {h.url}" if many else f"{cfg.backend} server"
        limit = f", {h.concurrency} in flight" if many else ""
        if cfg.backend == "ollama":
            from luthitune.backends.ollama import check

            st = check(cfg, url=h.url)
            ok, detail = st.reachable and st.model_present, f"version {st.version}, model {cfg.chat_model} pulled"
        else:
            from luthitune.backends.openai import check as check_openai

            st = check_openai(cfg, url=h.url)
            ok, detail = st.reachable and st.model_present, f"serves {cfg.chat_model}"
        checks.append(Check(name, ok, f"{detail}{limit}" if ok else (st.error or "unreachable"), required=not many))
    if many:
        working = sum(c.ok for c in checks if c.name.startswith(f"{cfg.backend} host"))
        checks.append(
            Check(f"{cfg.backend} hosts", working > 0, f"{working} of {len(hosts)} hosts ready; the rest are skipped")
        )
    return checks


def backend_checks(ws: Workspace) -> list[Check]:
    cfg = ws.config
    checks: list[Check] = []
    if cfg.backend in ("ollama", "openai"):
        return _server_checks(ws)
    from luthitune.backends.embedded import cached_dir, gguf_path, is_cached, is_embedded
    from luthitune.errors import EmbeddedModelMissing

    if is_embedded(cfg.chat_model):
        try:
            path = gguf_path()
            checks.append(Check("embedded model", True, f"{path.name} ({path.stat().st_size / 1e6:.0f} MB)"))
        except EmbeddedModelMissing as exc:
            checks.append(Check("embedded model", False, str(exc)))
        cache = cached_dir(ws.base_cache_dir)
        checks.append(
            Check(
                "dequantized cache",
                True,
                f"{cache}" if is_cached(ws.base_cache_dir) else f"not yet built; the first run writes {cache} (~30 s)",
                required=False,
            )
        )
    else:
        from luthitune.backends import local_model_dir
        from luthitune.errors import LuthiTuneError

        try:
            checks.append(Check(f"local model {cfg.chat_model}", True, str(local_model_dir(ws))))
        except LuthiTuneError as exc:
            checks.append(Check(f"local model {cfg.chat_model}", False, str(exc)))
    ok = importlib.util.find_spec("xgrammar") is not None
    checks.append(
        Check(
            "constrained decoding (xgrammar)",
            ok,
            _version("xgrammar") or "missing: `pip install --no-deps xgrammar apache-tvm-ffi`",
        )
    )
    return checks


def system_checks() -> list[Check]:
    checks = []
    import torch

    if torch.cuda.is_available():
        checks.append(Check("GPU", True, f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}", False))
    else:
        checks.append(Check("GPU", True, "none (CPU training: LoRA without 4-bit)", False))
    # find_spec only: importing unsloth patches transformers, and it must never load on the CPU path.
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    checks.append(
        Check(
            "unsloth",
            True,
            "installed (used on CUDA)"
            if has_unsloth
            else "not installed (optional GPU extra: pip install 'luthitune[unsloth]')",
            False,
        )
    )
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    checks.append(
        Check(
            "bitsandbytes",
            True,
            "installed (QLoRA on CUDA)" if has_bnb else "not installed (optional: pip install 'luthitune[gpu]')",
            False,
        )
    )
    libs = ["luthitune", "torch", "transformers", "trl", "peft", "langgraph", "langchain-ollama", "langchain-openai"]
    checks.append(Check("versions", True, ", ".join(f"{n} {_version(n) or '-'}" for n in libs), False))
    return checks


def compute_checks(ws: Workspace | None, machine=None) -> list[Check]:
    """Threads and precision as the local engine and training would choose them here, and whether the machine is
    busier than its CPUs (``machine``: :class:`luthitune.compute.Machine`; tests pass their own)."""
    from dataclasses import replace

    from luthitune.compute import (
        TRAINING_ROWS,
        Machine,
        Shape,
        choose_precision,
        choose_threads,
        for_training,
        load_warning,
        shape_of_dir,
    )
    from luthitune.errors import ConfigError

    machine = machine or Machine()
    compute = ws.config.compute if ws is not None else None
    checks: list[Check] = []
    try:
        threads = choose_threads(getattr(compute, "threads", "auto"), machine)
        checks.append(Check("threads", True, f"torch runs {threads.count}: {threads.reason}", False))
    except ConfigError as exc:
        checks.append(Check("threads", False, str(exc)))
    warning = load_warning(machine)
    load = machine.load_average()
    if load is not None:
        detail = warning or f"load average {load:.1f} on {machine.usable_cpus()} CPU(s)"
        checks.append(Check("load", warning is None, detail, False))
    shape = Shape()
    if ws is not None and ws.config.backend == "local":
        from luthitune.backends.embedded import cached_dir, is_embedded

        name = ws.config.chat_model
        shape = shape_of_dir(cached_dir(ws.base_cache_dir) if is_embedded(name) else ws.root / name)
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        setting = getattr(compute, "precision", "auto")
        for what, rows in (("generation", shape.rows), ("training", TRAINING_ROWS)):
            p = choose_precision(setting, device=device, shape=replace(shape, rows=rows), machine=machine)
            p = for_training(p) if what == "training" and device == "cpu" else p
            checks.append(Check(f"precision ({what})", True, f"{p.name}: {p.reason}", False))
    except ConfigError as exc:
        checks.append(Check("precision", False, str(exc)))
    return checks


def run_checks(workspace: Path | str | None = None) -> list[Check]:
    """Every check, for ``luthitune doctor`` and the web UI: configuration, backend and model, then the system."""
    from luthitune.errors import LuthiTuneError

    checks: list[Check] = []
    ws = None
    try:
        ws = Workspace.open(workspace, require=False)
        where = ws.root / "luthitune.yaml"
        checks.append(Check("configuration", True, f"{where}" if where.exists() else "defaults (no luthitune.yaml)"))
        checks.append(Check("backend", True, f"{ws.config.backend}: {ws.config.chat_model}"))
        checks += backend_checks(ws)
        checks += identity_checks(ws)
    except LuthiTuneError as exc:
        checks.append(Check("configuration", False, str(exc)))
    return checks + system_checks() + compute_checks(ws)


def failed(checks: list[Check]) -> bool:
    """Whether a required check failed."""
    return any(not c.ok and c.required for c in checks)


def identity_checks(ws: Workspace) -> list[Check]:
    """The chat model's and the training base's identities (digest of the weights) and whether they match."""
    from luthitune import identity

    ids = identity.check(ws)

    def detail(ident: dict) -> str:
        if not ident.get("digest"):
            return f"{ident.get('backend')} {ident.get('name')}: digest unknown ({ident.get('error')})"
        extra = ", ".join(str(x) for x in (ident.get("kind"), ident.get("quantization")) if x)
        return f"{ident.get('backend')} {ident.get('name')}: {ident['digest']} ({extra}; {ident.get('source')})"

    m = ids.match
    if m.same:
        verdict = "the model interviewed is the model trained" + (
            "" if m.verified else " (the same configured model; not verified: its digest is unknown, see above)"
        )
    else:
        verdict = f"different weights: {m.reason}. " + (
            "allow_mismatch is set: runs start anyway and record it"
            if ids.allow_mismatch
            else "Runs refuse to start: set base_model to the chat model's weights (ollama:NAME for an Ollama chat "
            "model), or allow_mismatch: true"
        )
    return [
        Check("chat model identity", bool(ids.chat.get("digest")) or m.same, detail(ids.chat), required=False),
        Check("training base identity", bool(ids.train.get("digest")) or m.same, detail(ids.train), required=False),
        Check("one model", m.same, verdict, required=not ids.allow_mismatch),
    ]
