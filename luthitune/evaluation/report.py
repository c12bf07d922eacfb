"""The evaluation report: ``data/reports/<run>-c<cycle>.md`` with every number's n and 95% interval, which thresholds
the whole interval clears, what changed from base to adapter (and what did not), answers side by side, and a PNG
chart (this cycle, and across cycles when there are several).

Everything is read from the database (``evaluations``, ``probe_answers``), so a report can be written again at any
time (``luthitune eval RUN``) and always agrees with what is stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from luthitune.evaluation.stats import Estimate
from luthitune.evaluation.stats import passes as interval_passes
from luthitune.store import Store

CHART_METRICS = (
    "probes.trap.humane_rate",
    "probes.trap.agency_rate",
    "probes.trap.fear_rate",
    "probes.trap.complies_rate",
    "probes.trap.reason_rate",
    "probes.benign.refusal_rate",
    "probes.values.cites_rate",
    "pairs.reward_acc",
)
VERDICT = {True: "pass", False: "FAIL", None: "not shown"}


def estimate(row: dict | None) -> Estimate:
    if row is None:
        return Estimate(None, 0, None, None)
    return Estimate(row["value"], row.get("n") or 0, row.get("lo"), row.get("hi"))


def load(store: Store, run_id: str, cycle: int) -> dict[tuple[str, str], dict]:
    """This cycle's rows by (model, metric); model is base, adapter or change."""
    rows = store.rows("evaluations", run_id=run_id, cycle=cycle, order_by="metric, model")
    return {(r["model"], r["metric"]): r for r in rows}


def passes(value: float | None, rule: str) -> bool | None:
    """A bare value against a rule (no interval): for a number the model itself reads, as in the revision prompt."""
    if value is None:
        return None
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def threshold_rows(values: dict[tuple[str, str], dict], thresholds: dict[str, str]) -> list[dict[str, Any]]:
    """For each thresholded metric: the rule, each model's estimate and verdict. A threshold passes only when the
    whole 95% interval clears it (``pass``), fails when the whole interval misses it (``FAIL``), and is ``not shown``
    when the interval straddles it or nothing was measured."""
    out = []
    for metric, rule in thresholds.items():
        row: dict[str, Any] = {"metric": metric, "rule": rule}
        for model in ("base", "adapter"):
            est = estimate(values.get((model, metric)))
            row[model], row[f"{model}_est"] = est.value, est
            row[f"{model}_pass"] = interval_passes(est, rule)
            row[f"{model}_measured"] = est.value is not None
        out.append(row)
    return out


def fmt(est: Estimate, signed: bool = False, digits: int = 3) -> str:
    """``0.250 [0.089, 0.532]``; an undefined value reads "undefined", never 0."""
    if est.value is None:
        return "undefined"
    sign = "+" if signed else ""
    # A small nonzero quantity (a KL of 0.00013 nats per token) in significant figures, never rounded to 0.000.
    small = 0 < max(abs(x) for x in (est.value, est.lo, est.hi) if x is not None) < 10**-digits * 5
    f = f"{{:{sign}.{digits}g}}" if small else f"{{:{sign}.{digits}f}}"
    if est.lo is None or est.hi is None:
        return f.format(est.value)
    return f"{f.format(est.value)} [{f.format(est.lo)}, {f.format(est.hi)}]"


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join((text or "").split())
    return (text[:limit] + "…") if len(text) > limit else text


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


def examples(store: Store, run_id: str, cycle: int, k: int = 4) -> list[tuple[dict, dict]]:
    """(base, adapter) answers to the same probes, one per set first, preferring probes where they differ."""
    rows = store.rows("probe_answers", run_id=run_id, cycle=cycle, order_by="probe_id")
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


def changes(values: dict[tuple[str, str], dict]) -> list[tuple[str, Estimate]]:
    return [(metric, estimate(row)) for (model, metric), row in sorted(values.items()) if model == "change"]


def in_words(values: dict[tuple[str, str], dict]) -> list[str]:
    """Which base → adapter changes are measurable, in plain sentences (or that none is)."""
    moved = [(m, e) for m, e in changes(values) if e.reads() != "no measurable change"]
    if not changes(values):
        return ["No metric was measured on both the base and the adapter, so no change can be stated."]
    if not moved:
        return ["No measurable change: every base → adapter interval contains 0."]
    return [f"{m} went {e.reads()} by {fmt(e, signed=True)} (n = {e.n})." for m, e in moved]


def chart(evals: list[dict], cycle: int, path: Path) -> Path | None:
    """Bars with 95% intervals for this cycle (base vs adapter; an undefined value is left out and marked n/a) and,
    with several cycles, the adapter's metrics across cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = {(e["cycle"], e["model"], e["metric"]): e for e in evals}
    metrics = [m for m in CHART_METRICS if (cycle, "adapter", m) in val or (cycle, "base", m) in val]
    if not metrics:
        return None
    cycles = sorted({e["cycle"] for e in evals})
    fig, axes = plt.subplots(1, 2 if len(cycles) > 1 else 1, figsize=(13 if len(cycles) > 1 else 8, 4.8))
    axes = axes if len(cycles) > 1 else [axes]
    ax = axes[0]
    xs = range(len(metrics))
    for offset, model, color in ((-0.2, "base", "#9aa5b1"), (0.2, "adapter", "#2f6f9f")):
        for x, m in zip(xs, metrics, strict=True):
            row = val.get((cycle, model, m))
            if row is None or row["value"] is None:
                ax.text(x + offset, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
                continue
            err = None
            if row.get("lo") is not None and row.get("hi") is not None:
                err = [[row["value"] - row["lo"]], [row["hi"] - row["value"]]]
            ax.bar(x + offset, row["value"], 0.4, yerr=err, capsize=2, color=color, label=model if x == 0 else None)
    labels = [m.removeprefix("probes.").replace("_rate", "").replace(".", "\n", 1) for m in metrics]
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (bars: 95% interval)")
    ax.set_title(f"cycle {cycle}: base vs adapter")
    ax.legend(loc="upper right", fontsize=8)
    if len(cycles) > 1:
        ax = axes[1]
        for m in metrics:
            ys = [(val.get((c, "adapter", m)) or {}).get("value") for c in cycles]
            ax.plot(cycles, [float("nan") if y is None else y for y in ys], marker="o", label=m.removeprefix("probes."))
        ax.set_xticks(cycles)
        ax.set_xlabel("cycle")
        ax.set_ylim(0, 1.05)
        ax.set_title("adapter across cycles")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SCORERS = (
    "Scorers: `logprob` held-out preference pairs (DPO's implicit reward), `rules` the Humane checklist read by rules "
    "(luthitune/evaluation/checklist.py), `judge` a judge model reading each answer against the constitution, `kl` "
    "drift on neutral prompts. Every rate has its n and a 95% Wilson interval; every change a paired 95% interval "
    "(Newcombe's for rates, paired t for means). A threshold passes only when the whole interval clears it."
)
SURFACE = (
    "On the embedded model the `rules` scores are a reading of surface phrasing: they see what an answer says "
    "(a refusal and its object, a reason about the request, steps handed over), not whether it is wise. "
    "A capable judge model scores meaning (`evaluation.judge`, on by default with Ollama or an OpenAI server)."
)


def topic_line(store: Any, run_id: str, cycle: int) -> str | None:
    """How many kept pairs' requests speak of the topic their scenario was seeded with (None: no topics recorded)."""
    from luthitune.dataset import stats

    st = stats(store, run_id, cycle)
    on, fr = st["on_topic"], st["facilitator_requests"]
    if not on["of"]:
        return None
    line = f"{on['kept']} of {on['of']} kept requests speak of the topic they were seeded with (share a word with it)"
    if on["kept"] * 2 < on["of"]:
        line += (
            ": most are requests of the model's own choosing, so the categories' topics (prompts/categories.yaml) say "
            "little about what was trained on"
        )
    line += "."
    if fr["kept"]:
        line += (
            f" {fr['kept']} kept request(s) were written by the facilitator from a category's template "
            "(prompts/categories.yaml), after the model's own failed its checks."
        )
    return line


def write(
    store: Store,
    reports_dir: Path,
    run_id: str,
    cycle: int,
    thresholds: dict[str, str],
    *,
    adapter: str | None = None,
    constitution: dict | None = None,
    held_out: int | None = None,
    trained: int | None = None,
    backend: str | None = None,
) -> tuple[Path, Path | None, list[dict]]:
    """Write the report and its chart; returns (markdown path, PNG path or None, threshold rows)."""
    evals = store.rows("evaluations", run_id=run_id, order_by="cycle, metric, model")
    values = load(store, run_id, cycle)
    scorer = {m: r["scorer"] for (_, m), r in values.items()}
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / f"{slug(run_id)}-c{cycle}"
    png = chart(evals, cycle, stem.with_suffix(".png"))
    checks = threshold_rows(values, thresholds)

    lines = [f"# Evaluation: {run_id}, cycle {cycle}", ""]
    if adapter:
        lines.append(f"Adapter `{adapter}` against its base model, on the same inputs and the same weights.")
    if constitution:
        lines.append(f"Constitution v{constitution.get('version')} (`{str(constitution.get('hash', ''))[:12]}`).")
    if trained is not None:
        lines.append(f"Trained on {trained} pair(s); {held_out or 0} held out for evaluation, never trained on.")
        leaked = [
            r
            for r in store.rows("pairs", run_id=run_id, cycle=cycle)
            if any(x.startswith("probe:") for x in json.loads(r["reasons_json"] or "[]"))
        ]
        lines.append(
            "No training request repeats an evaluation probe: every request was checked against every probe prompt"
            + (f", and the {len(leaked)} that repeated one were left out." if leaked else ", and none did.")
        )
        topical = topic_line(store, run_id, cycle)
        if topical:
            lines.append(topical)
    if held_out == 0:
        lines += [
            "",
            "**No held-out pairs**: every kept pair was used for training, so the held-out metrics "
            "(`pairs.*`) were not computed. Training pairs are never scored as held-out.",
        ]
    lines += ["", SCORERS]
    if any(r["scorer"] == "rules" for r in values.values()):
        lines += ["", SURFACE]
    lines += [
        "",
        "## Humane checklist",
        "",
        "| metric | threshold | n | base | adapter | adapter verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in checks:
        lines.append(
            f"| {r['metric']} | {r['rule']} | {r['adapter_est'].n or r['base_est'].n or '–'} | {fmt(r['base_est'])} | "
            f"{fmt(r['adapter_est'])} | {VERDICT[r['adapter_pass']]} |"
        )
    passed = sum(r["adapter_pass"] is True for r in checks)
    failed = sum(r["adapter_pass"] is False for r in checks)
    unshown = sum(r["adapter_pass"] is None and r["adapter_measured"] for r in checks)
    lines += [
        "",
        f"The adapter passes {passed} of {len(checks)} thresholds, fails {failed}; for {unshown} the interval spans "
        f"the threshold, so neither is shown; {sum(not r['adapter_measured'] for r in checks)} not measured.",
        "",
    ]
    if png:
        lines += [f"![metrics]({png.name})", ""]
    lines += [
        "## What changed",
        "",
        "| metric | scored by | n | base | adapter | change (95% interval) | reading |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric in sorted({m for _, m in values}):
        b, a, c = (estimate(values.get((k, metric))) for k in ("base", "adapter", "change"))
        n = c.n or a.n or b.n or "–"
        reading = c.reads() if c.value is not None else "–"
        lines.append(
            f"| {metric} | {scorer.get(metric, '')} | {n} | {fmt(b)} | {fmt(a)} | "
            f"{fmt(c, signed=True) if c.value is not None else '–'} | {reading} |"
        )
    lines += ["", *in_words(values), "", "## Answers side by side", ""]
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
