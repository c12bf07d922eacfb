"""``luthitune export gguf``: the trained model as GGUF files, made by llama.cpp's own converters.

- the **merged model** (the adapter merged into the base it was trained on, as ``export ollama --mode merged``
  makes it in ``models/merged/NAME/``) → ``NAME-<TYPE>.gguf``, by ``convert_hf_to_gguf.py``;
- the **adapter** alone → ``NAME-lora-<TYPE>.gguf``, by ``convert_lora_to_gguf.py`` (llama.cpp's ``--lora``, a
  Modelfile's ``ADAPTER``), where that converter takes the architecture;
- a ``Modelfile`` (``FROM ./NAME-<TYPE>.gguf``, the chat template, stops and parameters) and
  ``luthitune-export.json`` (base and adapter identity, converter version, sha256 of every file).

The converters are not re-implemented here. They are llama.cpp's, at the commit that ``llama-cpp-python`` vendors:
its source distribution on PyPI carries them with the ``gguf-py`` they are written against. ``make setup`` installs
them once (``luthitune export converter``: ``pip download`` of that sdist, and the converters' files extracted into
``<venv>/share/luthitune/llama.cpp/``); ``LLAMA_CPP_DIR`` points at a llama.cpp checkout instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from luthitune import export as E
from luthitune import identity
from luthitune.errors import ConfigError, LuthiTuneError, UsageError
from luthitune.workspace import Workspace

PACKAGE, VERSION = "llama-cpp-python", "0.3.36"  # vendors llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
PARTS = (*SCRIPTS, "conversion", "gguf-py", "LICENSE")  # what the scripts import, and llama.cpp's licence
OUTTYPES = ("f16", "bf16", "q8_0", "f32")
SOURCE = "luthitune-converter.json"


def default_converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "luthitune" / "llama.cpp"


def converter_dir() -> Path:
    """The folder with llama.cpp's converters: ``$LLAMA_CPP_DIR``, else the copy ``make setup`` installed."""
    env = os.environ.get("LLAMA_CPP_DIR")
    folder = Path(env).expanduser() if env else default_converter_dir()
    missing = [s for s in SCRIPTS if not (folder / s).is_file()]
    if not missing:
        return folder
    if env:
        raise ConfigError(f"LLAMA_CPP_DIR={env} has no {', '.join(missing)}: point it at a llama.cpp checkout.")
    raise ConfigError(
        f"llama.cpp's GGUF converters are not installed ({folder} has no {', '.join(missing)}). Install them with "
        "`luthitune export converter` (`make setup` does), or set LLAMA_CPP_DIR to a llama.cpp checkout."
    )


def install_converter(target: Path | None = None, *, sdist: Path | None = None) -> Path:
    """Extract llama.cpp's converters from ``llama-cpp-python``'s source distribution (downloaded with pip, or
    ``sdist``) into ``target``; written under a temporary name and renamed into place."""
    target = target or default_converter_dir()
    with tempfile.TemporaryDirectory(prefix="luthitune-llama-cpp-") as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            done = subprocess.run([*cmd, f"{PACKAGE}=={VERSION}", "-d", tmp], capture_output=True, text=True)
            found = sorted(Path(tmp).glob("*.tar.gz"))
            if done.returncode != 0 or not found:
                raise LuthiTuneError(
                    f"`pip download {PACKAGE}=={VERSION}` (the source of llama.cpp's converters) failed: "
                    f"{(done.stderr or done.stdout).strip()[-600:]}"
                )
            sdist = found[0]
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
                if rel.split("/")[0] in PARTS and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(partial, members=members, filter="data")  # no links, nothing outside the folder
        missing = [s for s in SCRIPTS if not (partial / s).is_file()]
        if missing:
            raise LuthiTuneError(f"{sdist.name} has no {', '.join(missing)} under {prefix}.")
        record = {"package": PACKAGE, "version": VERSION, "sdist": sdist.name, "sdist_sha256": _sha256(sdist)}
        (partial / SOURCE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _convert(script: Path, args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        raise LuthiTuneError(f"llama.cpp's {script.name} could not convert {what}: " + " | ".join(lines[-3:]))


@dataclass
class GGUFExport:
    name: str
    folder: Path
    model: Path
    adapter: Path | None
    modelfile: Path
    merged: Path
    notes: list[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)


def export_gguf(
    ws: Workspace, adapter: str, name: str | None = None, *, outtype: str = "f16", lora: bool = True
) -> GGUFExport:
    """Write ``models/gguf/NAME/``: the merged model as GGUF, the adapter as a GGUF LoRA (when ``lora`` and the
    converter takes it), a Modelfile and the export's record."""
    if outtype not in OUTTYPES:
        raise UsageError(f"Unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)}.")
    tools = converter_dir()
    adapter_dir = E.resolve_adapter(ws, adapter)
    base = identity.adapter_base(adapter_dir)
    trained = identity.trained_identity(adapter_dir, base)
    manifest = json.loads((adapter_dir / identity.MANIFEST_FILE).read_text())
    name = name or identity.trained_model_name(
        str(base.get("ollama_model") or base.get("name")), E.adapter_cycle(manifest, adapter_dir)
    )
    weights = E.weights_dir(ws, base)
    E.check_weights(base, weights)
    slug, kind = E.slug(name), outtype.upper()
    target = ws.models_dir / "gguf" / slug
    tmp = E.fresh(target.with_name(target.name + ".partial"))
    merged, _, _ = E.merged_files(ws, name, adapter_dir, weights)
    model = tmp / f"{slug}-{kind}.gguf"
    _convert(
        tools / SCRIPTS[0],
        [str(merged), "--outtype", outtype, "--outfile", str(model), "--model-name", name],
        "the merged model",
    )
    notes = []
    lora_file: Path | None = tmp / f"{slug}-lora-{kind}.gguf"
    if lora:
        try:
            _convert(
                tools / SCRIPTS[1],
                [str(adapter_dir), "--base", str(weights), "--outtype", outtype, "--outfile", str(lora_file)],
                "the adapter",
            )
        except LuthiTuneError as exc:
            notes.append(f"No GGUF adapter: {exc}")
            lora_file = None
    else:
        lora_file = None
    template, system, params, _ = E.base_format(ws, base, adapter_dir, weights)
    if (length := E.training_length(manifest)) is not None:
        params["num_ctx"] = length
    text = E.render_modelfile(
        from_=f"./{model.name}",
        template=template,
        system=system,
        parameters=params,
        comments=[
            f"Written by `luthitune export gguf` for {adapter_dir}",
            f"Base: {base.get('name')} = {base.get('digest')}",
        ],
    )
    (tmp / "Modelfile").write_text(text, encoding="utf-8")
    if base.get("kind") in ("gguf", "ollama"):
        notes.append(
            f"The base came from a {base.get('quantization') or 'quantized'} GGUF ({base.get('digest')}); the merged "
            f"model is its dequantized weights plus the adapter, written as {kind}, not the original quantization."
        )
    converter = json.loads((tools / SOURCE).read_text()) if (tools / SOURCE).exists() else {"folder": str(tools)}
    files = [p for p in (model, lora_file) if p is not None]
    record = {
        "name": name,
        "outtype": outtype,
        "identity": trained,
        "converter": converter,
        "merged_from": str(merged),
        "files": {p.name: "sha256:" + _sha256(p) for p in files},
    }
    (tmp / "luthitune-export.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return GGUFExport(
        name,
        target,
        target / model.name,
        target / lora_file.name if lora_file else None,
        target / "Modelfile",
        merged,
        notes,
        trained,
    )
