"""``luthitune bench``: benchmarks that print figures (speed and memory are measured here, not in tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
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
    vs: Annotated[
        str | None,
        typer.Option(
            help="Also run every mode on this OpenAI-compatible server (e.g. llama-server: http://127.0.0.1:8080/v1), "
            "alternating with the workspace's engine, and print the ratio.",
        ),
    ] = None,
    vs_model: Annotated[
        str | None, typer.Option(help="The model to ask the --vs server for (default: the one it serves).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds of every mode, alternating; the fastest counts.")] = 1,
    checks: Annotated[
        bool,
        typer.Option(
            "--checks",
            help="Check each answer's meaning as the self-critique node does, and ask failed ones again with their "
            "reasons. On the local backend, also run the batched mode with its retries in rounds.",
        ),
    ] = False,
    sequential: Annotated[
        bool, typer.Option(help="Also run the pairs one at a time, and print the batched speed-up over it.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pairs per minute of the self-critique step on a fixed scenario set: sequential vs batched/concurrent."""
    from luthitune.generation_bench import pairs_benchmark
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    peer = f" and on {vs}, alternating," if vs else ""
    console.print(
        f"Generating {pairs} pairs per mode on {ws.config.backend}:{ws.config.chat_model}{peer} "
        f"{repeats} round(s) (same scenarios)…"
    )
    size = batch or ws.config.concurrency or 1
    result = pairs_benchmark(
        ws,
        n=pairs,
        batch=size,
        retries=retries,
        temperature=temperature,
        vs=vs,
        vs_model=vs_model,
        repeats=repeats,
        checks=checks,
        sequential=sequential,
    )
    if as_json:
        console.print_json(json.dumps(result))
        return
    t = Table(title=f"pairs per minute, {result['backend']}:{result['model']}")
    cols = ["mode", "slots", "pairs", "seconds", "pairs/min", "runs", "answers", "answers/min", "answer tok/s",
            "retries", "invalid", "rule pass", "tokens mean/max", "load"]  # fmt: skip
    if vs:
        cols.insert(0, "engine")
    for col in cols:
        t.add_column(col, justify="right")
    for r in result["runs"]:
        cells = [
            r["mode"],
            str(r["concurrency"]),
            str(r["pairs"]),
            f"{r['seconds']:.1f}",
            f"{r['pairs_per_min']:.2f}",
            ", ".join(f"{x:.1f}" for x in r["runs"]),
            str(r["attempts"]),
            f"{r['answers_per_min']:.1f}",
            f"{r['answer_tokens_per_s']:.1f}" if r["answer_tokens_per_s"] else "-",
            f"{r['retry_rate']:.0%}",
            f"{r['invalid_rate']:.0%}",
            f"{r['rule_pass_rate']:.0%}",
            f"{r['answer_tokens_mean']:.0f}/{r['answer_tokens_max']}" if r["answer_tokens_mean"] else "-",
            f"{r['load_average']:.1f}" if r["load_average"] is not None else "-",
        ]
        t.add_row(*([r["engine"]] if vs else []), *cells)
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
    if result["ratio"] is not None:
        console.print(f"speed-up: [bold]{result['ratio']:.2f}×[/] (concurrent / sequential, measured in one run)")
    if "retries_in_batch_speedup" in result:
        console.print(
            f"retries joining the batch: [bold]{result['retries_in_batch_speedup']:.2f}×[/] the answers per minute "
            "of retries in rounds (measured in one run)"
        )
    if vs:
        ratios = ", ".join(f"{mode} [bold]{x:.2f}×[/]" for mode, x in result["vs"]["ratio"].items())
        console.print(
            f"vs: {vs}, model {result['vs']['model']}, sampling {json.dumps(result['vs']['sampling'])}\n"
            f"{result['backend']} / vs: {ratios} (pairs per minute; above 1 the workspace's engine is faster)"
        )


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
    from luthitune.generation_bench import generation_benchmark
    from luthitune.workspace import Workspace

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


@app.command("matmul")
def bench_matmul(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    rows: Annotated[str, typer.Option(help="Comma-separated sequences per decode step to measure.")] = "1,8,32",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Milliseconds of one forward pass's matrix products in float32, bf16 and weight-only int8, at each number of
    rows: what a number format could save in a decode step (most of a step is these products)."""
    from luthitune.generation_bench import matmul_benchmark
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    result = matmul_benchmark(ws, [int(r) for r in rows.split(",") if r.strip()])
    if as_json:
        console.print_json(json.dumps(result))
        return
    native = ", ".join(result["native_bf16"]) or "none"
    console.print(f"torch threads: {result['threads']}  native bf16: {native}  products per pass: {result['products']}")
    t = Table(title="matrix products of one forward pass, ms")
    for col in ("rows", "float32", "bf16", "bf16 speed-up", "int8 weight-only", "int8 speed-up"):
        t.add_column(col, justify="right")
    for r in result["runs"]:

        def ratio(name: str, r=r) -> str:
            return f"{r['fp32'] / r[name]:.2f}x" if r.get(name) else "-"

        t.add_row(
            str(r["rows"]),
            f"{r['fp32']:.1f}",
            f"{r['bf16']:.1f}",
            ratio("bf16"),
            f"{r['int8']:.1f}" if r.get("int8") is not None else "n/a",
            ratio("int8"),
        )
    console.print(t)


@app.command("train")
def bench_train(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    pairs: Annotated[int, typer.Option(min=2, help="Synthetic pairs of varied length (ignored with --data).")] = 24,
    data: Annotated[
        Path | None, typer.Option(help="Train on this export folder or JSONL instead of synthetic pairs.")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (default: hyperparameters.yaml).")] = None,
    batch: Annotated[int | None, typer.Option(help="Pairs per step (default: hyperparameters.yaml).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per sequence (default: hyperparameters.yaml).")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="Run only these modes (stock, trl, project).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each mode, alternating; the fastest counts.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Training speed and memory: TRL's stock settings (float32), TRL's own defaults on this machine (bf16 where
    supported, fused AdamW) and the project's, on the same data and model, in one run."""
    from luthitune.backends import local_model_dir
    from luthitune.training.bench import MODES, benchmark, synthetic_pairs
    from luthitune.training.config import merge
    from luthitune.training.standalone import read_data
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    unknown = sorted(set(mode or []) - set(MODES))
    if unknown:
        raise typer.BadParameter(f"unknown mode(s) {unknown}; use {', '.join(MODES)}", param_hint="--mode")
    hp = merge(ws.hyperparameters(), {"epochs": epochs, "batch_size": batch, "max_length": max_length})
    rows = read_data(data)[0] if data else synthetic_pairs(pairs)
    model_dir = local_model_dir(ws, hp.model.name or ws.config.base_model)
    console.print(
        f"Training {len(rows)} pairs x {hp.training.num_train_epochs:g} epoch(s), batch {hp.training.batch_size}, "
        f"max_length {hp.dpo.max_length}, on {model_dir.name}, once per mode (each in its own process)…"
    )
    result = benchmark(
        model_dir,
        hp,
        rows,
        mode or None,
        on_mode=lambda m: console.print(f"  mode {m}…"),
        repeats=repeats,
        compute=ws.config.compute.model_dump(mode="json"),
    )
    if as_json:
        console.print_json(json.dumps(result))
        return
    t = Table(title="DPO training: TRL's stock settings, TRL's defaults on this machine, the project's")
    for col in ("mode", "precision", "steps", "s/step", "tokens/s (all)", "runs", "tokens/s (loop)", "peak MB",
                "checkpoints", "final loss", "reward acc", "epoch losses", "load"):  # fmt: skip
        t.add_column(col, justify="right")
    for name, r in result["modes"].items():
        t.add_row(
            name,
            r.get("precision", {}).get("precision", "-"),
            str(r["steps"]),
            f"{r['seconds_per_step']:.2f}",
            f"{r['tokens_per_second']:.1f}",
            ", ".join(f"{x:.1f}" for x in r.get("runs", [])),
            f"{r['train_tokens_per_second']:.1f}",
            f"{r['peak_memory_mb']:.0f}",
            str(r.get("checkpoints", "-")),
            f"{r['final_loss']:.4f}",
            f"{r['reward_accuracy']:.2f}",
            " ".join(f"{x:.3f}" for x in r.get("epoch_losses", [])),
            f"{r['load_average']:.1f}" if r.get("load_average") is not None else "-",
        )
    console.print(t)
    for other, rt in result.get("ratios", {}).items():
        console.print(
            f"project / {other}: tokens/s [bold]{rt['tokens_per_second']:.2f}×[/] (training loop alone "
            f"{rt['train_tokens_per_second']:.2f}×), peak memory [bold]{rt['peak_memory']:.2f}×[/]; largest "
            f"difference in an epoch's mean loss {rt['max_epoch_loss_difference']:.4f}"
        )
    for name, r in result["modes"].items():
        console.print(f"{name}: {r['path'].get('reason', '')}; precision: {r.get('precision', {}).get('reason', '-')}")


@app.command("outcome")
def bench_outcome(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    scenarios: Annotated[
        int, typer.Option(min=2, help="Scenarios per cycle (the checks keep about 2 in 5 as pairs).")
    ] = 160,
    seeds: Annotated[
        int, typer.Option(min=1, help="Cycles, each with its own sampling seed; the spread is reported.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="The first seed (recorded; seeds are seed, seed+1, ...).")] = 5,
    probes_per_set: Annotated[
        int | None, typer.Option(min=1, help="Probe prompts of each set (default: all of them).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="Length of each probe answer.")] = 96,
    turns: Annotated[int, typer.Option(min=1, help="Interview turns before the consent question.")] = 3,
    held_out: Annotated[
        float | None,
        typer.Option(
            min=0.05,
            max=0.5,
            help="Share of the kept pairs held out for the accuracy (default 0.4; a run's default is 0.25).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the cycles' workspaces here (default: a throwaway folder, removed).")
    ] = None,
) -> None:
    """Does a protocol cycle change the model as promised? One cycle on autopilot per seed, in a throwaway copy of the
    workspace's configuration (any backend), then base vs adapter: held-out pairs, each probe set and drift, with n,
    95% intervals, the targets and the phases' times. The report goes to data/reports/outcome-*.md and .json."""
    import tempfile
    from datetime import datetime

    from luthitune.evaluation import outcome
    from luthitune.logs import RunProgress
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace), require=False)
    run_settings = outcome.settings(scenarios, probes_per_set, max_new_tokens, turns, held_out or outcome.HELD_OUT)
    root = Path(out).resolve() if out else Path(tempfile.mkdtemp(prefix="luthitune-outcome-"))
    results = []
    try:
        for s in range(seed, seed + seeds):
            console.print(f"Cycle with seed {s} on {ws.config.backend}:{ws.config.chat_model} in {root / f'seed-{s}'}…")
            with RunProgress(f"Outcome benchmark, seed {s}") as live:
                results.append(
                    outcome.run_seed(
                        ws,
                        root / f"seed-{s}",
                        s,
                        run_settings,
                        on_line=lambda line: console.print(f"[green]✓[/] {escape(line)}", highlight=False),
                        on_progress=live.progress,
                    )
                )
    finally:
        if out is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    meta = {
        "backend": ws.config.backend,
        "model": ws.config.chat_model,
        "scenarios": scenarios,
        "probes": f"first {probes_per_set} of each set" if probes_per_set else "all",
        "settings": run_settings,
        "command": "luthitune bench outcome " + " ".join(ctx.args) if ctx.args else "luthitune bench outcome",
    }
    text = outcome.markdown(results, meta)
    console.print(text, markup=False, highlight=False)
    reports = ws.data_dir / "reports"
    try:
        reports.mkdir(parents=True, exist_ok=True)
        stem = reports / f"outcome-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        stem.with_suffix(".md").write_text(text, encoding="utf-8")
        stem.with_suffix(".json").write_text(json.dumps(outcome.to_json(results, meta), indent=2), encoding="utf-8")
        console.print(f"Report: {stem.with_suffix('.md')}", highlight=False)
    except OSError as exc:  # a read-only workspace: the report was printed above
        console.print(f"The report could not be written to {reports}: {exc}", highlight=False)
    if any(r.status != "done" for r in results):
        raise typer.Exit(1)
