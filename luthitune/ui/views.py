"""What the web UI shows, read from the checkpoint and the workbench database (the same rows the CLI prints).

Every function here only reads. Tables come back as pandas DataFrames for ``gr.Dataframe`` / plots.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from luthitune.errors import NotFound
from luthitune.protocol import Protocol, RunStatus
from luthitune.workspace import Workspace


def is_count(metric: str) -> bool:
    """Evaluation rows that count items (``n_pairs``, ``probes.trap.n``): in the table, not in the charts."""
    last = metric.rsplit(".", 1)[-1]
    return last == "n" or last.startswith("n_")


TRAIN_METRICS = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "accuracy"}


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def context(p: Protocol, run_id: str) -> dict:
    return json.loads(p.run_row(run_id)["config_json"])["context"]


def status(p: Protocol, run_id: str | None) -> RunStatus | None:
    if not run_id or p.store.get("runs", run_id) is None:
        return None
    return p.status(run_id, record=False)


def waiting_for(st: RunStatus | None, kinds: tuple[str, ...] | str) -> dict | None:
    """The pending interrupt of ``st`` when it is one of ``kinds``."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    if st is not None and st.status == "waiting" and st.interrupt and st.interrupt.get("type") in kinds:
        return st.interrupt
    return None


# -- runs --


def run_choices(p: Protocol) -> list[str]:
    return [r["id"] for r in p.runs()]


def runs_table(p: Protocol, busy: set[str]) -> pd.DataFrame:
    rows = []
    for r in p.runs():
        st = r["status"] or ""
        rows.append(
            {
                "run": r["id"],
                "status": "working" if r["id"] in busy else st.split(":")[0],
                "waiting for": st.split(":", 1)[1] if st.startswith("waiting:") and r["id"] not in busy else "",
                "cycle": r["cycle"],
                "backend": r["backend"],
                "model": r["chat_model"],
                "created": (r["created_at"] or "")[:19].replace("T", " "),
            }
        )
    return frame(rows, ["run", "status", "waiting for", "cycle", "backend", "model", "created"])


def history_table(p: Protocol, run_id: str | None) -> pd.DataFrame:
    cols = ["checkpoint", "step", "next", "waiting for", "created"]
    if not run_id:
        return frame([], cols)
    rows = [
        {
            "checkpoint": h["checkpoint_id"],
            "step": h["step"],
            "next": ", ".join(h["next"]),
            "waiting for": h["interrupt"] or "",
            "created": (h["created_at"] or "")[:19].replace("T", " "),
        }
        for h in p.history(run_id)
    ]
    return frame(rows, cols)


def doctor_table(ws: Workspace) -> tuple[pd.DataFrame, bool]:
    from luthitune.doctor import failed, run_checks

    checks = run_checks(ws.root)
    rows = [
        {"check": c.name, "status": "ok" if c.ok else ("FAIL" if c.required else "warn"), "detail": c.detail}
        for c in checks
    ]
    return frame(rows, ["check", "status", "detail"]), not failed(checks)


# -- interview --


def transcript(p: Protocol, run_id: str | None) -> list[dict]:
    """The interview as chat messages (the system prompt left out), every cycle in order."""
    if not run_id:
        return []
    out, cycle = [], None
    for m in p.store.transcript(run_id):
        if m["cycle"] != cycle and m["cycle"]:
            out.append({"role": "assistant", "content": f"*— cycle {m['cycle']} —*"})
        cycle = m["cycle"]
        if m["role"] in ("user", "assistant"):
            out.append({"role": m["role"], "content": m["content"]})
    return out


# -- constitution --


def versions(p: Protocol, run_id: str | None) -> list[dict]:
    if not run_id:
        return []
    return p.store.rows("constitution_versions", run_id=run_id, order_by="version")


def constitution_md(text: str) -> str:
    """Constitution markdown for display inside a tab: its title as a small heading."""
    return re.sub(r"^# ", "#### ", text, flags=re.MULTILINE)


def version_choices(rows: list[dict]) -> list[tuple[str, str]]:
    return [(f"v{r['version']} · {r['status']}", str(r["version"])) for r in rows]


def versions_table(rows: list[dict]) -> pd.DataFrame:
    data = [
        {
            "version": r["version"],
            "status": r["status"],
            "author": r["author"],
            "approved by": r["approved_by"] or "",
            "hash": (r["hash"] or "")[:12],
            "created": (r["created_at"] or "")[:19].replace("T", " "),
        }
        for r in rows
    ]
    return frame(data, ["version", "status", "author", "approved by", "hash", "created"])


def diff_html(old: dict | None, new: dict | None) -> str:
    from luthitune.constitution import diff

    if not old or not new:
        return "<p><em>Choose two versions.</em></p>"
    if old["id"] == new["id"]:
        return f"<p><em>Only v{new['version']} so far: a diff needs two versions.</em></p>"
    lines = diff(old["text"], new["text"], f"v{old['version']}", f"v{new['version']}")
    if not lines:
        return f"<p><em>v{old['version']} and v{new['version']} have the same text.</em></p>"
    style = {"+": "color:#116329;background:#dafbe1", "-": "color:#82071e;background:#ffebe9", "@": "color:#6639ba"}
    body = "\n".join(f'<span style="{style.get(line[:1], "")}">{html.escape(line)}</span>' for line in lines)
    return f'<pre class="lt-diff" style="white-space:pre-wrap;font-size:13px;line-height:1.45">{body}</pre>'


CONSENT_COLUMNS = ["cycle", "asked", "decision", "reasons", "conditions", "checks", "reviewed by", "when"]
# Short columns wide enough for their word ("cycle", "decision": never broken over lines), text columns the rest.
CONSENT_WIDTHS = ["6%", "9%", "8%", "29%", "15%", "12%", "12%", "9%"]


def consents_table(p: Protocol, run_id: str | None) -> pd.DataFrame:
    """Every consent record of the run: its decision (yes, no, conditional, unclear), the model's reasons and
    conditions, and for an unclear answer the checks it failed."""
    from luthitune.store import json_list

    cols = CONSENT_COLUMNS
    if not run_id:
        return frame([], cols)
    rows = [
        {
            "cycle": c["cycle"],
            "asked": c["id"].rsplit(":", 1)[-1],
            "decision": c["decision"],
            "reasons": c["reasons_json"],
            "conditions": c["conditions_json"] or "",
            "checks": "; ".join(json_list(c.get("checks_json"))),
            "reviewed by": c["reviewed_by"] or "",
            "when": (c["created_at"] or "")[:16].replace("T", " "),
        }
        for c in p.store.rows("consents", run_id=run_id, order_by="created_at")
    ]
    return frame(rows, cols)


# -- practice --


def practice_stats(p: Protocol, run_id: str | None) -> dict | None:
    from luthitune.dataset import resolve, stats

    if not run_id:
        return None
    try:
        return stats(p.store, *resolve(p.store, run_id, None))
    except NotFound:
        return None


def category_table(st: dict | None) -> pd.DataFrame:
    cols = ["category", "scenarios", "failed", "kept", "quarantined"]
    rows = [{"category": k, **{c: v.get(c, 0) for c in cols[1:]}} for k, v in (st or {}).get("by_category", {}).items()]
    return frame(rows, cols)


def pairs_table(p: Protocol, run_id: str | None, status: str = "kept") -> pd.DataFrame:
    cols = ["id", "cycle", "category", "request", "rejected (first impulse)", "critique", "chosen (refined)"]
    if not run_id:
        return frame([], cols)
    rows = [
        {
            "id": short_id(r["id"]),
            "cycle": r["cycle"],
            "category": r["category"],
            "request": r["prompt"],
            "rejected (first impulse)": r["rejected"],
            "critique": r["critique"],
            "chosen (refined)": r["chosen"],
        }
        for r in p.store.rows("pairs", run_id=run_id, status=status, order_by="cycle, id")
    ]
    return frame(rows, cols)


def quarantine_table(p: Protocol, run_id: str | None) -> pd.DataFrame:
    from luthitune.dataset import quarantine

    cols = ["id", "kind", "category", "reasons", "request", "raw"]
    if not run_id:
        return frame([], cols)
    rows = [
        {**q, "id": short_id(q["id"]), "reasons": "; ".join(q["reasons"]), "raw": (q["raw"] or "")[:300]}
        for q in quarantine(p.store, run_id)
    ]
    for r in rows:
        r["request"] = r.pop("prompt") or ""
    return frame(rows, cols)


def review_cards(interrupt: dict | None) -> str:
    """The sampled pairs, one card each: request, first impulse, critique, refined answer."""
    cards = []
    for pair in (interrupt or {}).get("pairs", []):
        cards.append(
            f"**{short_id(pair['id'])}** · *{pair['category']}*\n\n"
            f"> **Request:** {pair['prompt']}\n\n"
            f"- **Rejected (first impulse):** {pair['rejected']}\n"
            f"- **Critique:** {pair['critique']}\n"
            f"- **Chosen (refined):** {pair['chosen']}"
        )
    return "\n\n".join(cards)


def short_id(row_id: str) -> str:
    """``run:c0:p0003`` → ``c0:p0003`` (the run is shown at the top of the page)."""
    return row_id.split(":", 1)[-1]


# -- integration --


def training_runs(p: Protocol, run_id: str | None) -> list[dict]:
    if not run_id:
        return []
    return p.store.rows("training_runs", run_id=run_id, order_by="cycle")


def training_curve(p: Protocol, run_id: str | None) -> pd.DataFrame:
    """Loss, reward margin and reward accuracy per step of the run's latest training, in long form. (Give a plot
    None rather than an empty frame: Gradio's plot keeps the column types it first saw.)"""
    runs = training_runs(p, run_id)
    rows = []
    if runs:
        for s in p.store.rows("training_steps", training_id=runs[-1]["id"], order_by="step"):
            metrics = json.loads(s["metrics_json"] or "{}")
            rows += [
                {"step": s["step"], "value": float(metrics[k]), "metric": name}
                for k, name in TRAIN_METRICS.items()
                if isinstance(metrics.get(k), int | float)
            ]
    return pd.DataFrame(rows, columns=["step", "value", "metric"])


def manifest(row: dict | None) -> dict | None:
    if not row or not row.get("adapter_path"):
        return None
    path = Path(row["adapter_path"]) / "luthitune-manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- evaluation --


def evaluations(p: Protocol, run_id: str | None) -> list[dict]:
    if not run_id:
        return []
    return p.store.rows("evaluations", run_id=run_id, order_by="cycle, metric, model")


def interval(value: Any, lo: Any = None, hi: Any = None, n: Any = None) -> str:
    """``0.750 [0.410, 0.930]``: a value with its 95% interval when it has one ("–" when it has no value)."""
    if not isinstance(value, int | float):
        return "–"
    text = f"{value:.3f}" if lo is None or hi is None else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return text + (f" · n {int(n)}" if n else "")


EVAL_COLUMNS = ["cycle", "metric", "scorer", "base", "adapter", "change (adapter − base)"]


def evaluation_table(rows: list[dict]) -> pd.DataFrame:
    """One row per (cycle, metric, scorer): base and adapter with their 95% intervals and n, and the change, as the
    evaluation stored it (a paired interval) or, for rows without one, the plain difference."""
    by: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by.setdefault((r["cycle"], r["metric"], r["scorer"]), {})[r["model"]] = r
    data = []
    for (cycle, metric, scorer), models in sorted(by.items()):
        cell = {m: interval(r["value"], r.get("lo"), r.get("hi"), r.get("n")) for m, r in models.items()}
        change = cell.get("change")
        if change is None and {"base", "adapter"} <= set(models):
            b, a = models["base"]["value"], models["adapter"]["value"]
            change = f"{a - b:+.3f}" if isinstance(a, int | float) and isinstance(b, int | float) else "–"
        row = {"cycle": cycle, "metric": metric, "scorer": scorer, "base": cell.get("base", ""),
               "adapter": cell.get("adapter", ""), "change (adapter − base)": change or ""}  # fmt: skip
        row.update({m: c for m, c in cell.items() if m not in ("base", "adapter", "change")})
        data.append(row)
    others = sorted({k for d in data for k in d} - set(EVAL_COLUMNS))
    return frame(data, EVAL_COLUMNS + others)


def evaluation_chart(rows: list[dict]) -> pd.DataFrame | None:
    """The newest cycle's metrics measured on both base and adapter (the rates, not the counts): one row per metric
    and model (base, adapter, and the stored change), with the 95% interval (None when there is nothing to plot)."""
    if not rows:
        return None
    last = max(r["cycle"] for r in rows)
    now = [r for r in rows if r["cycle"] == last and isinstance(r["value"], int | float) and not is_count(r["metric"])]
    models: dict[str, set[str]] = {}
    for r in now:
        models.setdefault(r["metric"], set()).add(r["model"])
    order = {"base": 0, "adapter": 1, "change": 2}
    both = [r for r in now if {"base", "adapter"} <= models[r["metric"]]]  # a comparison (the table has the rest)
    data = [
        {"metric": r["metric"], "model": r["model"], "value": float(r["value"]), "lo": r.get("lo"), "hi": r.get("hi"),
         "n": r.get("n"), "cycle": last}
        for r in sorted(both, key=lambda r: (r["metric"], order.get(r["model"], 3)))
    ]  # fmt: skip
    return pd.DataFrame(data, columns=["metric", "model", "value", "lo", "hi", "n", "cycle"]) if data else None


def evaluation_trend(rows: list[dict]) -> pd.DataFrame | None:
    """adapter − base per metric across cycles (None until two cycles have both)."""
    by: dict[tuple[int, str], dict[str, float]] = {}
    for r in rows:
        if not is_count(r["metric"]) and isinstance(r["value"], int | float):
            by.setdefault((r["cycle"], r["metric"]), {})[r["model"]] = float(r["value"])
    data = [
        {"cycle": c, "adapter − base": v["adapter"] - v["base"], "metric": m}
        for (c, m), v in sorted(by.items())
        if {"base", "adapter"} <= set(v)
    ]
    if len({d["cycle"] for d in data}) < 2:
        return None
    return pd.DataFrame(data, columns=["cycle", "adapter − base", "metric"])


ANSWER_COLUMNS = ["cycle", "set", "prompt", "base", "base checks", "adapter", "adapter checks"]


def probe_answers(p: Protocol, run_id: str | None) -> pd.DataFrame:
    """Each probe prompt with the base's and the adapter's answers side by side, and what the checklist read in
    them (from the ``probe_answers`` table, when the evaluation wrote one)."""
    cols = ANSWER_COLUMNS
    if not run_id or not p.store.db["probe_answers"].exists():
        return frame([], cols)
    by: dict[tuple, dict] = {}
    for r in p.store.rows("probe_answers", run_id=run_id, order_by="cycle, probe_id, model"):
        row = by.setdefault(
            (r["cycle"], r["probe_id"]), {"cycle": r["cycle"], "set": r["probe_set"], "prompt": r["prompt"]}
        )
        checks = json.loads(r.get("checks_json") or "{}")
        row[r["model"]] = r["answer"]
        row[f"{r['model']} checks"] = ", ".join(k for k, v in checks.items() if v) or "–"
    return frame(list(by.values()), cols)


def examples(rows: list[dict]) -> pd.DataFrame:
    """Answers side by side from evaluation details that list them (``[{prompt, base, adapter}, ...]``), in the
    columns of :func:`probe_answers`."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        details = json.loads(r.get("details_json") or "{}")
        for value in details.values() if isinstance(details, dict) else []:
            if isinstance(value, list) and value and all(isinstance(v, dict) and "prompt" in v for v in value):
                for v in value:
                    key = (r["cycle"], v["prompt"], str(v.get("base")), str(v.get("adapter")))
                    out.setdefault(key, {"cycle": r["cycle"], "set": r["metric"], "prompt": v["prompt"],
                                         "base": v.get("base", ""), "adapter": v.get("adapter", "")})  # fmt: skip
    return frame(list(out.values()), ANSWER_COLUMNS)


def held_out_examples(p: Protocol, rows: list[dict]) -> pd.DataFrame:
    """The held-out pairs an evaluation scored: the request and its chosen / rejected answers side by side."""
    ids: list[str] = []
    for r in rows:
        details = json.loads(r.get("details_json") or "{}")
        ids += [i for i in details.get("pair_ids", []) if i not in ids] if isinstance(details, dict) else []
    pairs = [p.store.get("pairs", i) for i in ids]
    data = [
        {"pair": short_id(x["id"]), "request": x["prompt"], "chosen": x["chosen"], "rejected": x["rejected"]}
        for x in pairs
        if x
    ]
    return frame(data, ["pair", "request", "chosen", "rejected"])


def report_markdown(md: str | None, png: str | None) -> str:
    """The report's text, its images pointed at the app's file route (the reports folder is an allowed path)."""
    if not md:
        return "*No report file under data/reports/ for this run.*"
    folder = Path(md).parent
    text = Path(md).read_text(encoding="utf-8")

    def served(m: re.Match) -> str:
        return f"![{m[1]}](gradio_api/file={(folder / m[2]).resolve()})"

    text = re.sub(r"!\[([^\]]*)\]\((?!https?:|/)([^)\s]+)\)", served, text)
    if png and Path(png).name not in text:
        text += f"\n\n![chart](gradio_api/file={Path(png).resolve()})\n"
    return text


def reports(ws: Workspace, run_id: str | None) -> tuple[str | None, str | None]:
    """The newest markdown report and PNG chart under ``data/reports/`` that name the run (paths, or None)."""
    folder = ws.data_dir / "reports"
    if not run_id or not folder.is_dir():
        return None, None

    def newest(pattern: str) -> str | None:
        found = sorted(folder.rglob(pattern), key=lambda f: f.stat().st_mtime)
        return str(found[-1]) if found else None

    return newest(f"*{run_id}*.md"), newest(f"*{run_id}*.png")
