"""The web UI's charts, drawn with matplotlib (``gr.Plot``): the training curve and the evaluation's bars.

Drawn here rather than with Gradio's own plots because these need what those cannot give: one axis per quantity
(loss, reward margin and reward accuracy differ in scale), whole-number steps, labels that fit whatever the metric's
name, and 95% intervals on every bar. Figures are built without pyplot's global state, so the UI's threads can draw
at once; each carries ``lt_fingerprint``, its data, so the live view redraws only when the data changed.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = {"base": "#9aa5b1", "adapter": "#f58518", "change": "#4c78a8"}
QUANTITIES = (("loss", "DPO loss"), ("margin", "reward margin"), ("accuracy", "reward accuracy"))


def training_figure(df: pd.DataFrame) -> Figure:
    """Loss, reward margin and reward accuracy per step (``df``: step, value, metric in long form), each on its own
    axis, one x axis of whole steps."""
    shown = [(key, title) for key, title in QUANTITIES if (df["metric"] == key).any()]
    fig = Figure(figsize=(8, 1.9 * max(len(shown), 1) + 0.4), layout="constrained")
    axes = fig.subplots(max(len(shown), 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, title) in zip(axes, shown, strict=False):
        part = df[df["metric"] == key].sort_values("step")
        ax.plot(part["step"], part["value"], marker="o", markersize=3, linewidth=1.4, color="#f58518")
        ax.set_ylabel(title, fontsize=9)
        ax.grid(alpha=0.3)
        if key == "accuracy":
            ax.set_ylim(-0.05, 1.05)
    fig.suptitle("Loss, reward margin and reward accuracy per step", fontsize=10)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[-1].set_xlabel("step")
    fig.lt_fingerprint = df.to_json()
    return fig


def _label(metric: str) -> str:
    return metric.removeprefix("probes.").replace("_rate", " rate").replace("_", " ")


def evaluation_figure(df: pd.DataFrame) -> Figure:
    """The newest cycle: base and adapter per metric as horizontal bars with their 95% intervals, and beside them
    each stored change (adapter − base) with its paired interval against zero (``df``: ``views.evaluation_chart``)."""
    metrics = list(dict.fromkeys(df["metric"]))
    changes = df[df["model"] == "change"]
    fig = Figure(figsize=(11, 0.55 * len(metrics) + 1.4), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2]) if len(changes) else (fig.subplots(), None)
    ys = {m: i for i, m in enumerate(metrics)}
    for offset, model in ((-0.2, "base"), (0.2, "adapter")):
        part = df[df["model"] == model]
        y = [ys[m] + offset for m in part["metric"]]
        err = _errors(part)
        left.barh(y, part["value"], 0.38, xerr=err, capsize=2, color=COLORS[model], label=model)
    left.set_yticks(range(len(metrics)), [_label(m) for m in metrics], fontsize=9)
    left.invert_yaxis()
    left.set_xlabel("value (bars: 95% interval)")
    left.legend(loc="lower right", fontsize=8)
    left.grid(axis="x", alpha=0.3)
    left.set_title(f"cycle {int(df['cycle'].iloc[0])}: base vs adapter", fontsize=10)
    if right is not None:
        y = [ys[m] for m in changes["metric"]]
        right.errorbar(changes["value"], y, xerr=_errors(changes), fmt="o", color=COLORS["change"], capsize=3)
        right.axvline(0, color="#555", linewidth=0.8)
        right.set_xlabel("change, adapter − base (95% paired interval)")
        right.grid(axis="x", alpha=0.3)
        right.set_title("an interval that holds 0: no measurable change", fontsize=10)
    fig.lt_fingerprint = df.to_json()
    return fig


def _errors(part: pd.DataFrame):
    """Error bar lengths below and above each value, from lo and hi (0 where a row has no interval)."""
    lo, hi = pd.to_numeric(part["lo"], errors="coerce"), pd.to_numeric(part["hi"], errors="coerce")
    has = lo.notna() & hi.notna()
    below = (part["value"] - lo).where(has, 0.0).clip(lower=0)
    above = (hi - part["value"]).where(has, 0.0).clip(lower=0)
    return [list(below), list(above)]
