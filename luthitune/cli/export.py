"""``luthitune export``: serve a trained adapter elsewhere (``export ollama``, ``export gguf``)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.markup import escape

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.logs import console

app = typer.Typer(help="Export a trained adapter to serve it outside LuthiTune.", no_args_is_help=True)


class Mode(str, Enum):
    adapter = "adapter"
    merged = "merged"


@app.command("ollama")
def ollama(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Ollama model name (default: BASE-luthitune-cN, e.g. smol-luthitune-c0).")
    ] = None,
    adapter: Annotated[
        str, typer.Option("--adapter", help="Adapter folder, or its name under models/adapters/ (e.g. RUN-c0).")
    ] = ...,  # type: ignore[assignment]
    mode: Annotated[
        Mode | None,
        typer.Option(
            help="adapter: FROM the same base + ADAPTER (the default for ollama: bases); "
            "merged: the adapter merged into the base, as safetensors (the default otherwise)."
        ),
    ] = None,
    create: Annotated[
        bool | None,
        typer.Option("--create/--no-create", help="Run `ollama create` (default: when the Ollama server answers)."),
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Write a Modelfile (and the adapter folder or the merged weights) and create the model in Ollama."""
    from luthitune.export import export_ollama
    from luthitune.names import check_name
    from luthitune.workspace import Workspace

    if name is not None:
        check_name(name, "Ollama model name", ollama=True)  # it names models/ollama/NAME/ and models/merged/NAME/
    ws = Workspace.open(workspace_arg(ctx, workspace))
    r = export_ollama(ws, adapter, name, mode=mode.value if mode else None, create=create)
    base = r.identity
    console.print(
        f"Exported [bold]{escape(r.name)}[/] ({r.mode} mode): base {escape(str(base.get('name')))} "
        f"{base.get('digest')} + adapter {base['adapters'][0]}",
        highlight=False,
    )
    console.print(f"  Modelfile: {r.modelfile}", highlight=False)
    for note in r.notes:
        console.print(f"  [yellow]note[/]: {escape(note)}", highlight=False)
    if r.created:
        console.print(f"Created [bold]{escape(r.name)}[/] in Ollama at {r.url} ({escape(r.status)}).")
        console.print(f"Talk to it: `ollama run {escape(r.name)}`", highlight=False)
    else:
        why = "Not created (--no-create)" if r.reachable else f"Ollama is not reachable at {r.url}"
        console.print(f"{why}: create the model with", highlight=False)
        console.print(f"  {escape(r.command)}", highlight=False, soft_wrap=True)


class GGUFType(str, Enum):
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"
    f32 = "f32"


@app.command("gguf")
def gguf(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Name of the files (default: BASE-luthitune-cN).")] = None,
    adapter: Annotated[
        str, typer.Option("--adapter", help="Adapter folder, or its name under models/adapters/ (e.g. RUN-c0).")
    ] = ...,  # type: ignore[assignment]
    outtype: Annotated[GGUFType, typer.Option(help="Weight type of the GGUF files.")] = GGUFType.f16,
    lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Also write the adapter alone as a GGUF LoRA.")] = True,
    workspace: WorkspaceOpt = None,
) -> None:
    """Write the merged model (and the adapter) as GGUF with llama.cpp's converters, plus a Modelfile."""
    from luthitune.gguf_export import export_gguf
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace))
    r = export_gguf(ws, adapter, name, outtype=outtype.value, lora=lora)
    console.print(f"Exported [bold]{escape(r.name)}[/] as GGUF in {r.folder}", highlight=False)
    console.print(f"  model: {r.model.name}" + (f"\n  adapter: {r.adapter.name}" if r.adapter else ""), highlight=False)
    for note in r.notes:
        console.print(f"  [yellow]note[/]: {escape(note)}", highlight=False)
    console.print(f"  llama.cpp: `llama-cli -m {r.model}`", highlight=False)
    console.print(f"  Ollama: `ollama create {escape(r.name)} -f {r.modelfile}`", highlight=False, soft_wrap=True)


@app.command("converter")
def converter(
    force: Annotated[bool, typer.Option(help="Install again even when it is there.")] = False,
) -> None:
    """Install llama.cpp's GGUF converters (from llama-cpp-python's source distribution, with pip)."""
    from luthitune.gguf_export import PACKAGE, VERSION, converter_dir, default_converter_dir, install_converter

    target = default_converter_dir()
    if not force and (target / "convert_hf_to_gguf.py").exists():
        console.print(f"llama.cpp's converters are installed in {converter_dir()}.", highlight=False)
        return
    console.print(f"Installing llama.cpp's converters from {PACKAGE}=={VERSION} into {target}...", highlight=False)
    install_converter(target)
    console.print("Done.")
