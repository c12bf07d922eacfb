"""``luthitune bench``: benchmarks that print figures (speed and memory are measured here, not in tests)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.logs import console

app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)


@app.command("generate")
def bench_generate(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    pairs: Annotated[int, typer.Option(min=1, help="Pairs generated in each mode.")] = 32,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Batch size (local) or requests in flight over all hosts (ollama, openai). "
            "Default: the workspace's concurrency (with several hosts, the sum of their limits).",
        ),
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Structured-output retries per item.")] = 2,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pairs per minute of the self-critique step on a fixed scenario set: sequential vs batched/concurrent."""
    from luthitune.bench import pairs_benchmark
    from luthitune.config import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    console.print(f"Generating {pairs} pairs twice on {ws.config.backend}:{ws.config.chat_model} (same scenarios)…")
    size = batch or ws.config.concurrency or 1
    result = pairs_benchmark(ws, n=pairs, batch=size, retries=retries, temperature=temperature)
    if as_json:
        console.print_json(json.dumps(result))
        return
    t = Table(title=f"pairs per minute, {result['backend']}:{result['model']}")
    cols = (
        "mode",
        "slots",
        "pairs",
        "seconds",
        "pairs/min",
        "retry rate",
        "invalid rate",
        "rule pass",
        "tokens mean/max",
    )
    for col in cols:
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            r["mode"],
            str(r["concurrency"]),
            str(r["pairs"]),
            f"{r['seconds']:.1f}",
            f"{r['pairs_per_min']:.2f}",
            f"{r['retry_rate']:.0%}",
            f"{r['invalid_rate']:.0%}",
            f"{r['rule_pass_rate']:.0%}",
            f"{r['answer_tokens_mean']:.0f}/{r['answer_tokens_max']}" if r["answer_tokens_mean"] else "-",
        )
    console.print(t)
    if len(result["hosts"]) > 1:  # how the work was spread: answers per host in each mode
        h = Table(title="answers per host")
        h.add_column("host")
        h.add_column("limit", justify="right")
        for r in result["runs"]:
            h.add_column(r["mode"], justify="right")
        for host in result["hosts"]:
            counts = [str(r["hosts"].get(host["url"], 0)) for r in result["runs"]]
            h.add_row(host["url"], str(host["concurrency"]), *counts)
        console.print(h)
    console.print(f"speed-up: [bold]{result['ratio']:.2f}×[/] (concurrent / sequential, measured in one run)")


@app.command("tokens")
def bench_tokens(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes to measure.")] = "1,8",
    tokens: Annotated[int, typer.Option(help="New tokens per sequence.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed repeats per batch size (after one warm-up).")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Load time (first and cached) and tokens/s of the local backend, unbatched and batched."""
    from luthitune.bench import generation_benchmark
    from luthitune.config import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    sizes = [int(b) for b in batch.split(",") if b.strip()]
    result = generation_benchmark(ws, sizes, tokens=tokens, repeats=repeats)
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"model: {result['model']}  device: {result['device']}  torch threads: {result['threads']}")
    console.print(f"dequantize GGUF -> safetensors (first load): {result['first_load_s']}")
    console.print(f"load from cached safetensors: {result['cached_load_s']:.2f} s")
    t = Table(title="generation throughput")
    for col in ("batch", "new tokens", "seconds", "tokens/s (total)", "tokens/s per sequence"):
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            str(r["batch"]),
            str(r["new_tokens"]),
            f"{r['seconds']:.2f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['tokens_per_s'] / r['batch']:.1f}",
        )
    console.print(t)
