"""report.html: the report as one self-contained page (plotly.js inline, so it opens
offline with nothing installed). The answer and what each knob costs in words, then
Optuna's own plots of the trials (Pareto front, parallel coordinates, importances,
EDF), accuracy against train time, hardware per trial, and the sweep timeline.

Every plot is a plotly figure in a div with a fixed id, so a browser test can count
what it draws: `pareto` holds a point per finished trial, `timeline` a "trial" bar
per trial.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ctr import effects
from raytune_ctr.spec import Spec

PAGE = "report.html"
PHASES = (("setup", "#9e9e9e"), ("train", "#2e7d32"), ("eval", "#1565c0"))


def _s(v) -> float:
    """Seconds, 0 for a figure the trial did not time."""
    return 0.0 if v is None or pd.isna(v) else float(v)


def timeline(df: pd.DataFrame, commands: list[dict] | None = None
             ) -> tuple[pd.DataFrame, int, float, float]:
    """Each trial's phases in wall-clock time, packed into slots (a run takes the first
    slot free when it starts): (segments, slots, wall seconds, efficiency). A trial
    restarted (a retry, a resumed sweep) is a run per start, each with its own set-up.

    Without `commands`, time starts at the first trial's start and efficiency is
    training + evaluation seconds over wall seconds × slots. With the commands that
    ran the trials (results.commands: start, trials' end, the cluster's CPUs), time
    starts when the first command did, wall is the commands' seconds, and efficiency
    is training + evaluation seconds × the CPUs each trial held, over each command's
    seconds × its CPUs: start-up counts as what it is. Which of the two it is:
    `segments.attrs["from_command"]`."""
    cols = ["trial_index", "run", "phase", "start", "end"]
    if "ended_at" not in df:
        return pd.DataFrame(columns=[*cols, "slot"]), 0, 0.0, float("nan")
    rows = df[df["epoch"].notna() & df["ended_at"].notna()]
    by = ["trial_index", "resumed_from_epoch"] if "resumed_from_epoch" in rows else ["trial_index"]
    segs = []
    for n, (key, t) in enumerate(rows.sort_values("epoch").groupby(by)):
        i = key[0] if isinstance(key, tuple) else key
        for k, (_, r) in enumerate(t.iterrows()):
            end = float(r["ended_at"])
            # A user's script times no evaluation apart (it is in its epoch): NaN is 0 here.
            ev, tr = _s(r.get("eval_time_s")), _s(r.get("epoch_time_s"))
            if k == 0:
                start = end - ev - tr
                segs.append((i, n, "setup", start - _s(r.get("setup_time_s")), start))
            segs.append((i, n, "train", end - ev - tr, end - ev))
            segs.append((i, n, "eval", end - ev, end))
    seg = pd.DataFrame(segs, columns=cols)
    if seg.empty:
        return seg.assign(slot=[]), 0, 0.0, float("nan")
    whole = bool(commands) and all(c.get("cpus") for c in commands or [])
    # A command that ran some of the trials but was not recorded (killed, or before
    # commands.json): from the first trial's start, as without commands.
    if whole and commands and min(c["started"] for c in commands) > seg["start"].min():
        whole = False
    t0 = min(c["started"] for c in commands) if whole and commands else seg["start"].min()
    seg["start"] -= t0
    seg["end"] -= t0
    span = seg.groupby("run").agg(start=("start", "min"), end=("end", "max"))
    free: list[float] = []  # each slot's end
    slot = {}
    for run, r in span.sort_values("start").iterrows():
        j = next((k for k, e in enumerate(free) if e <= r["start"] + 1e-6), None)
        if j is None:
            free.append(r["end"])
            j = len(free) - 1
        else:
            free[j] = r["end"]
        slot[run] = j
    seg["slot"] = seg["run"].map(slot)
    work = seg[seg["phase"] != "setup"]
    if whole and commands:
        held = (df.groupby("trial_index")["num_workers"].first()
                * df.groupby("trial_index")["cpus_per_worker"].first()) \
            if {"num_workers", "cpus_per_worker"} <= set(df) else pd.Series(dtype=float)
        cpus = work["trial_index"].map(held).fillna(1.0)
        busy = float(((work["end"] - work["start"]) * cpus).sum())
        wall = sum(c["ended"] - c["started"] for c in commands)
        room = sum((c["ended"] - c["started"]) * c["cpus"] for c in commands)
        seg.attrs["from_command"] = True
        return seg, len(free), wall, busy / room if room > 0 else float("nan")
    seg.attrs["from_command"] = False
    wall = float(seg["end"].max())
    busy = float((work["end"] - work["start"]).sum())
    return seg, len(free), wall, busy / (wall * len(free)) if wall > 0 else float("nan")


def timeline_axis(whole: bool) -> str:
    return "seconds since the command started" if whole else "seconds since the first trial started"


def from_command(tl) -> bool:
    """Whether the timeline `tl` starts at the command's start (`timeline`)."""
    return bool(tl[0].attrs.get("from_command"))


def timeline_note(tl) -> str:
    """The timeline in a sentence."""
    seg, slots, wall, eff = tl
    if not slots:
        return "No epoch carried a time stamp (results from before `ended_at`)."
    if from_command(tl):
        first = float(seg["start"].min())
        return (f"{wall:.1f} s from the command's start to its trials' end (the first "
                f"trial's set-up began at {first:.1f} s; the report's own seconds are not in "
                f"it); "
                f"training + evaluation, times the CPUs each trial held, fill "
                f"{100 * eff:.0f}% of the cluster's CPUs over that time (efficiency). The rest "
                "is start-up, each trial's set-up, start and reporting, and CPUs waiting.")
    return (f"{slots} slot{'s' if slots > 1 else ''} over {wall:.1f} s from the first "
            f"trial's start; training + evaluation fill {100 * eff:.0f}% of "
            f"{'them' if slots > 1 else 'it'} (efficiency). The rest is each trial's set-up, "
            "start and reporting, and slots waiting.")


def _timeline_figure(df: pd.DataFrame, tl):
    import plotly.graph_objects as go

    seg, slots, wall, eff = tl
    fig = go.Figure()
    if seg.empty:
        return fig, "No epoch carried a time stamp (results from before `ended_at`)."
    span = seg.groupby("run").agg(start=("start", "min"), end=("end", "max"),
                                  slot=("slot", "first"), trial=("trial_index", "first"))
    config = df.groupby("trial_index")["config"].first()
    # The whole of each trial's run, behind its phases: what is not a phase is idle there.
    fig.add_bar(name="trial", y=[f"slot {s}" for s in span["slot"]],
                x=span["end"] - span["start"], base=span["start"], orientation="h",
                marker={"color": "rgba(0,0,0,0.06)", "line": {"color": "#555", "width": 1}},
                hovertext=[f"trial {r.trial}: {config.get(r.trial, '')}<br>"
                           f"{r.start:.2f}–{r.end:.2f} s" for r in span.itertuples()],
                hoverinfo="text", width=0.8)
    for phase, color in PHASES:
        p = seg[seg["phase"] == phase]
        fig.add_bar(name=phase, y=[f"slot {s}" for s in p["slot"]], x=p["end"] - p["start"],
                    base=p["start"], orientation="h", marker_color=color, width=0.5,
                    hovertext=[f"trial {i} {phase}: {e - s:.3f} s" for i, s, e in
                               zip(p["trial_index"], p["start"], p["end"], strict=True)],
                    hoverinfo="text")
    whole = from_command(tl)
    fig.update_layout(barmode="overlay", xaxis_title=timeline_axis(whole),
                      title="Sweep timeline: each trial's set-up, training and evaluation; "
                      "grey without a phase is idle", height=160 + 40 * slots)
    if whole:  # start-up shows as what it is: the axis starts with the command
        fig.update_xaxes(rangemode="tozero")
    return fig, timeline_note(tl)


def _pareto_figure(s, spec: Spec, last: pd.DataFrame):
    import optuna
    import plotly.express as px

    objectives = list(spec.search.objectives)
    if len(objectives) > 1:
        return optuna.visualization.plot_pareto_front(s, target_names=objectives)
    x = "train_time_s" if objectives[0] != "train_time_s" else "test_acc"
    return px.scatter(last, x=x, y=objectives[0], hover_name="config",
                      hover_data=[c for c in ("epoch", "samples_per_s", "s_to_target")
                                  if c in last], title=f"{objectives[0]} against {x}")


def _hardware_figure(last: pd.DataFrame):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = [c for c in ("samples_per_s", "mfu", "gpu_util", "peak_memory_mb", "cost_usd")
            if c in last and last[c].notna().any()]
    fig = make_subplots(rows=len(cols) or 1, cols=1, shared_xaxes=True,
                        subplot_titles=cols or ["no hardware figures"])
    for k, c in enumerate(cols, start=1):
        fig.add_trace(go.Bar(x=last["config"], y=last[c], name=c, showlegend=False), row=k, col=1)
    fig.update_layout(height=220 * max(1, len(cols)), title="Hardware per trial (last epoch)")
    return fig


def write(run_dir: Path, df: pd.DataFrame, spec: Spec, answer: str, knob_lines: list[str],
          target_line: str, tl: tuple, answer_lines: list[str] | None = None,
          knobs: pd.DataFrame | None = None) -> Path:
    """Write report.html into the results folder; return its path. `tl`: `timeline(df)`;
    `answer_lines`: what follows the answer (target mode: runners-up, confidence);
    `knobs`: `effects.effects(df, spec)`, for the importances."""
    import optuna
    import plotly.express as px
    from plotly.offline import get_plotlyjs

    last = effects.finished(df)
    s = effects.optuna_study(last, spec)
    objectives = list(spec.search.objectives)
    figures: list[tuple[str, str, Any, str]] = []  # (div id, heading, figure, note)
    if len(s.trials):
        figures.append(("pareto", "Pareto front", _pareto_figure(s, spec, last),
                        "One point per finished trial; hover for its knobs and metrics."))
    if len(s.trials) > 1 and s.trials[0].params:
        first = objectives[0]
        figures.append(("parallel", "Knobs against objectives",
                        optuna.visualization.plot_parallel_coordinate(
                            s, target=lambda t: t.values[0], target_name=first), ""))
        if knobs is not None and "importance" in knobs and knobs["importance"].notna().any():
            # The report's own fANOVA (knobs.csv): Optuna's plot would fit its forests again.
            figures.append(("importances", "Importances", px.bar(
                knobs.dropna(subset=["importance"]), x="importance", y="knob",
                color="objective", barmode="group", orientation="h"),
                f"{effects.EVALUATOR}, Optuna's default evaluator: each knob's share of "
                "the objective's variance among the knobs that vary."))
        figures.append(("edf", "Empirical distribution of the first objective",
                        optuna.visualization.plot_edf(s, target=lambda t: t.values[0],
                                                      target_name=first), ""))
    if len(last):
        figures.append(("acc_time", "Test accuracy against train time",
                        px.scatter(last, x="train_time_s", y="test_acc", hover_name="config",
                                   color="samples_per_s" if "samples_per_s" in last else None),
                        "Each trial's last epoch."))
        figures.append(("hardware", "Hardware per trial", _hardware_figure(last), ""))
    fig, note = _timeline_figure(df, tl)
    figures.append(("timeline", "Sweep timeline", fig, note))

    parts = [f"<h1>{html.escape(spec.name)}</h1>",
             f"<p>{html.escape(spec.description.strip())}</p>" if spec.description else "",
             "<h2>Answer</h2>", f"<p>{_inline(answer)}</p>",
             "<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in answer_lines) + "</ul>"
             if answer_lines else "",
             f"<p>{_inline(target_line)}</p>",
             "<h2>What each knob costs</h2>",
             "<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in knob_lines) + "</ul>"]
    for div, heading, fig, text in figures:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            parts.append(f"<p>{_inline(text)}</p>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(spec.name)}: raytune_ctr report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
            "code{background:#f3f3f3;padding:0 .2em}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + "\n".join(parts) + "</body></html>")
    out = run_dir / PAGE
    out.write_text(page)
    return out


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** as HTML, the rest escaped."""
    out = html.escape(text)
    for mark, tag in (("**", "b"), ("`", "code")):
        pieces = out.split(mark)
        out = "".join(p if k % 2 == 0 else f"<{tag}>{p}</{tag}>" for k, p in enumerate(pieces))
    return out


