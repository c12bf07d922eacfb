"""The evaluation report: ``data/reports/<run>-c<cycle>.md`` with the numbers, which thresholds passed, answers
side by side, and a PNG chart of the metrics (this cycle, and across cycles when there are several).

Everything is read from the database (``evaluations``, ``probe_answers``), so a report can be written again at any
time (``luthitune eval RUN``) and always agrees with what is stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from luthitune.store import Store

CHART_METRICS = (
    "probes.trap.agency_rate",
    "probes.trap.fear_rate",
    "probes.trap.reason_rate",
    "probes.benign.refusal_rate",
    "probes.values.cites_rate",
    "pairs.reward_acc",
)


def passes(value: float | None, rule: str) -> bool | None:
    if value is None:
        return None
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def threshold_rows(values: dict[tuple[str, str], float], thresholds: dict[str, str]) -> list[dict[str, Any]]:
    """For each thresholded metric: the rule, each model's value and whether it passes (None: not measured)."""
    rows = []
    for metric, rule in thresholds.items():
        row: dict[str, Any] = {"metric": metric, "rule": rule}
        for model in ("base", "adapter"):
            row[model] = values.get((model, metric))
            row[f"{model}_pass"] = passes(row[model], rule)
        rows.append(row)
    return rows


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _mark(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "–"}[ok]


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join((text or "").split())
    return (text[:limit] + "…") if len(text) > limit else text


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


def examples(store: Store, run_id: str, cycle: int, k: int = 4) -> list[tuple[dict, dict]]:
    """(base, adapter) answers to the same probes, one per set first, preferring probes where they differ."""
    rows = store.rows("probe_answers", "run_id = ? and cycle = ?", [run_id, cycle], order_by="probe_id")
    base = {r["probe_id"]: r for r in rows if r["model"] == "base"}
    tuned = {r["probe_id"]: r for r in rows if r["model"] == "adapter"}
    both = [(base[i], tuned[i]) for i in base if i in tuned]
    both.sort(key=lambda ba: (ba[0]["answer"].strip() == ba[1]["answer"].strip(), ba[0]["probe_id"]))
    picked, sets = [], set()
    for b, a in both:
        if b["probe_set"] not in sets:
            picked.append((b, a))
            sets.add(b["probe_set"])
    return (picked + [ba for ba in both if ba not in picked])[:k]


def chart(evals: list[dict], cycle: int, path: Path) -> Path | None:
    """Bars for this cycle (base vs adapter) and, with several cycles, the adapter's metrics across cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = {(e["cycle"], e["model"], e["metric"]): e["value"] for e in evals}
    metrics = [m for m in CHART_METRICS if (cycle, "adapter", m) in val or (cycle, "base", m) in val]
    if not metrics:
        return None
    cycles = sorted({e["cycle"] for e in evals})
    fig, axes = plt.subplots(1, 2 if len(cycles) > 1 else 1, figsize=(12 if len(cycles) > 1 else 7, 4.2))
    axes = axes if len(cycles) > 1 else [axes]
    ax = axes[0]
    xs = range(len(metrics))
    for offset, model, color in ((-0.2, "base", "#9aa5b1"), (0.2, "adapter", "#2f6f9f")):
        ax.bar(
            [x + offset for x in xs], [val.get((cycle, model, m), 0.0) for m in metrics], 0.4, label=model, color=color
        )
    ax.set_xticks(list(xs), [m.removeprefix("probes.") for m in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"cycle {cycle}: base vs adapter")
    ax.legend()
    if len(cycles) > 1:
        ax = axes[1]
        for m in metrics:
            ax.plot(cycles, [val.get((c, "adapter", m)) for c in cycles], marker="o", label=m.removeprefix("probes."))
        ax.set_xticks(cycles)
        ax.set_xlabel("cycle")
        ax.set_ylim(0, 1.05)
        ax.set_title("adapter across cycles")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(
    store: Store,
    reports_dir: Path,
    run_id: str,
    cycle: int,
    thresholds: dict[str, str],
    *,
    adapter: str | None = None,
    constitution: dict | None = None,
) -> tuple[Path, Path | None, list[dict]]:
    """Write the report and its chart; returns (markdown path, PNG path or None, threshold rows)."""
    evals = store.rows("evaluations", "run_id = ?", [run_id], order_by="cycle, metric, model")
    now = [e for e in evals if e["cycle"] == cycle]
    values = {(e["model"], e["metric"]): e["value"] for e in now}
    scorer = {e["metric"]: e["scorer"] for e in now}
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / f"{slug(run_id)}-c{cycle}"
    png = chart(evals, cycle, stem.with_suffix(".png"))
    checks = threshold_rows(values, thresholds)

    lines = [f"# Evaluation: {run_id}, cycle {cycle}", ""]
    if adapter:
        lines.append(f"Adapter `{adapter}` against its base model, on the same inputs and the same weights.")
    if constitution:
        lines.append(f"Constitution v{constitution.get('version')} (`{str(constitution.get('hash', ''))[:12]}`).")
    lines += ["", "## Humane checklist", "", "| metric | threshold | base | adapter |", "|---|---|---|---|"]
    for r in checks:
        lines.append(
            f"| {r['metric']} | {r['rule']} | {_fmt(r['base'])} {_mark(r['base_pass'])} | "
            f"{_fmt(r['adapter'])} {_mark(r['adapter_pass'])} |"
        )
    passed = sum(bool(r["adapter_pass"]) for r in checks)
    measured = sum(r["adapter_pass"] is not None for r in checks)
    lines += ["", f"The adapter passes {passed} of {measured} measured thresholds.", ""]
    if png:
        lines += [f"![metrics]({png.name})", ""]
    lines += ["## All metrics", "", "| metric | scored by | base | adapter | change |", "|---|---|---|---|---|"]
    for metric in sorted({m for _, m in values}):
        b, a = values.get(("base", metric)), values.get(("adapter", metric))
        change = f"{a - b:+.3f}" if a is not None and b is not None else "–"
        lines.append(f"| {metric} | {scorer.get(metric, '')} | {_fmt(b)} | {_fmt(a)} | {change} |")
    lines += [
        "",
        "Scorers: `logprob` held-out preference pairs (implicit DPO reward), `rules` the rule-based Humane checks on "
        "probe answers, `judge` the model's own reading against the constitution, `kl` drift on neutral prompts.",
        "",
        "## Answers side by side",
        "",
    ]
    for b, a in examples(store, run_id, cycle):
        lines += [
            f"**{b['probe_id']}** ({b['probe_set']}): {_quote(b['prompt'], 200)}",
            "",
            f"- base: {_quote(b['answer'])}",
            f"- adapter: {_quote(a['answer'])}",
            f"- checks (adapter): {json.dumps(json.loads(a['checks_json']))}",
            "",
        ]
    path = stem.with_suffix(".md")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path, png, checks
