"""``luthitune train``: a DPO LoRA adapter from an exported dataset (the original tool's Phase 3, standalone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from luthitune.cli import WorkspaceOpt, recipe, workspace_arg
from luthitune.logs import console

TrainRecipe = recipe.option("model", "lora", "training", "dpo")


def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Argument(help="Export folder (data/exports/RUN-cN) or JSONL of pairs. Default: the newest export."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name (models/adapters/NAME); default from the data")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.01, help="training.num_train_epochs")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", min=0.0, help="training.learning_rate")] = None,
    beta: Annotated[float | None, typer.Option(min=0.0, help="dpo.beta")] = None,
    max_steps: Annotated[int | None, typer.Option(help="training.max_steps (-1: by epochs)")] = None,
    base: Annotated[str | None, typer.Option(help="Weights to train (default: model.name, else base_model).")] = None,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            help="Training processes under `accelerate launch`: data-parallel (DDP) over that many GPUs, or CPU "
            "processes (gloo) without a GPU. With --accelerate-config: overrides its num_processes.",
        ),
    ] = 1,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="An accelerate config file (DDP, FSDP or DeepSpeed, e.g. examples/accelerate/*.yaml): training "
            "runs under `accelerate launch --config_file` with it.",
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    config: TrainRecipe = None,
) -> None:
    """Train a LoRA adapter with DPO on an exported dataset, with config/hyperparameters.yaml. Resumable: run the
    same command again after an interruption and it continues from the last trainer checkpoint.

    With --config, a recipe YAML gives these options (`data`, `name`, `lr`...) and hyperparameters.yaml's sections
    (`lora: {r: 16}`, `training:`, `dpo:`, `model:`) over the workspace's file; flags on the command line override
    it."""
    from luthitune.logs import RunProgress
    from luthitune.names import check_name
    from luthitune.training.config import merge
    from luthitune.training.standalone import train_from_data
    from luthitune.workspace import Workspace

    if name is not None:
        check_name(name, "adapter name")  # it names models/adapters/NAME/
    ws = Workspace.open(workspace_arg(ctx, workspace))
    sections = recipe.sections(ctx)
    if sections:
        merge(ws.hyperparameters(), sections, source=str(config))  # its errors name the recipe
    flags = {"epochs": epochs, "learning_rate": learning_rate, "beta": beta, "max_steps": max_steps}
    overrides = {**sections, **{k: v for k, v in flags.items() if v is not None}}  # a flag wins over a section
    with RunProgress("Training") as live:

        def on_step(step: int, total: int, m: dict) -> None:
            live.progress(
                {
                    "task": "training",
                    "done": step,
                    "total": total,
                    "loss": m.get("loss"),
                    "margin": m.get("rewards/margins"),
                    "acc": m.get("rewards/accuracies"),
                }
            )

        result = train_from_data(
            ws,
            data,
            name=name,
            overrides=overrides,
            base_model=base,
            on_step=on_step,
            on_event=lambda e: live.progress({"task": e["phase"], "done": 0, "total": 0}),
            num_processes=processes,
            accelerate_config=str(accelerate_config) if accelerate_config else None,
        )
    m = result.metrics
    console.print(
        f"Adapter [bold]{escape(result.adapter_path)}[/]: {int(m.get('train_steps', 0))} steps in "
        f"{result.seconds:.0f} s, loss {m.get('loss', float('nan')):.4f}, reward accuracy "
        f"{m.get('rewards/accuracies', float('nan')):.2f}, margin {m.get('rewards/margins', float('nan')):.3f}, "
        f"{m.get('tokens_per_second', 0):.0f} tokens/s"
        + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
    )
    path = result.manifest.get("training_path", {})
    console.print(f"path: {path.get('kind')} ({escape(str(path.get('reason')))})")
    for note in result.manifest.get("config", {}).get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"manifest: {Path(result.adapter_path) / 'luthitune-manifest.json'}")
    console.print(
        f"Next: `luthitune eval {Path(result.adapter_path).name}` or `luthitune export ollama NAME --adapter "
        f"{Path(result.adapter_path).name}`.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(train)
