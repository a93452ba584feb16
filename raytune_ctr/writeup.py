"""The report: the studies' tables, the Pareto front, the answer to "fastest config
reaching X% accuracy", hardware figures per trial, and plots. Built only from a
results folder (spec.yaml + trials.parquet), so it can be rebuilt at any time.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from raytune_ctr import effects, metrics, page, results
from raytune_ctr import target as target_mode
from raytune_ctr.metrics import MEASURED, RESULTS
from raytune_ctr.spec import ResourceSpec, Spec, TrainSpec

log = logging.getLogger(__name__)

PLOTS = ("pareto.png", "acc_by_epoch.png", "epoch_time.png", "timeline.png")
EPOCH_BARS = 40  # configs shown in epoch_time.png; the Time table has them all
KNOBS = "knobs.csv"  # per knob and objective: change, its standard error, importance


def label_trials(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Add `config`: the searched values of each trial, seed left out so seeds group."""
    keys = [k for k in spec.searched_keys() if k != "seed"]
    df = df.copy()
    if keys:
        # Column by column: a row-wise apply would upcast ints to floats.
        cols = [[f"{k}={_short(v)}" for v in df[k].tolist()] for k in keys]
        df["config"] = [" ".join(parts) for parts in zip(*cols, strict=True)]
    else:
        df["config"] = "trial " + df["trial_index"].astype(str)
    return df


def _short(v) -> str:
    if not isinstance(v, float):
        return str(v)
    s = f"{v:.4g}"
    return s if "." in s or "e" in s else s + ".0"


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last reported epoch of every trial that reported at all."""
    ok = df[df["epoch"].notna()]
    return ok.sort_values("epoch").groupby("trial_index", sort=True).tail(1).sort_values("trial_index")


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and pd.notna(std) else "")


def by_epoch(df: pd.DataFrame, value: str, digits: int) -> pd.DataFrame:
    """config x epoch table of `value`, mean ± std over seeds (studies S1/S2 shape)."""
    ok = df[df["epoch"].notna() & (df["status"] != "FAILED")]
    g = ok.groupby(["config", "epoch"], sort=False)[value].agg(["mean", "std", "count"])
    cells = g.apply(lambda r: _fmt(r["mean"], r["std"], int(r["count"]), digits), axis=1)
    table = cells.unstack("epoch")
    table.columns = [f"epoch {int(c)}" for c in table.columns]
    return table.fillna("")


def time_table(df: pd.DataFrame, spec: Spec) -> tuple[pd.DataFrame, str]:
    """s/epoch, total train time and speedup against the baseline config."""
    ok = df[df["epoch"].notna() & (df["status"] != "FAILED")]
    if ok.empty:
        return pd.DataFrame(), ""
    last = final_rows(ok)
    per = pd.DataFrame({
        "s/epoch": ok.groupby("config", sort=False)["epoch_time_s"].mean(),
        "total train s": last.groupby("config", sort=False)["train_time_s"].mean(),
        "epochs": last.groupby("config", sort=False)["epoch"].max().astype(int),
        "samples/s": ok.groupby("config", sort=False)["samples_per_s"].mean(),
        "final test acc %": last.groupby("config", sort=False)["test_acc"].mean(),
    })
    base = baseline_config(ok, spec)
    per["speedup"] = per.loc[base, "s/epoch"] / per["s/epoch"]
    # What the speedup costs in accuracy (studies.md S5): points against the baseline.
    per["Δ acc (points)"] = per["final test acc %"] - per.loc[base, "final test acc %"]
    if "test_f1" in last and last["test_f1"].notna().any():
        per["final test F1 %"] = last.groupby("config", sort=False)["test_f1"].mean()
    # Memory next to accuracy and time (S4): the device's peak, CUDA on a GPU.
    mem = "peak_memory_mb" if "peak_memory_mb" in ok and ok["peak_memory_mb"].notna().any() \
        else "peak_rss_mb"
    per["peak memory MiB"] = ok.groupby("config", sort=False)[mem].max()
    if "cost_usd" in last and last["cost_usd"].notna().any():
        per["cost USD"] = last.groupby("config", sort=False)["cost_usd"].mean()
    per = per.round({"s/epoch": 2, "total train s": 1, "samples/s": 0, "final test acc %": 2,
                     "final test F1 %": 2, "speedup": 2, "Δ acc (points)": 2,
                     "peak memory MiB": 0, "cost USD": 5})
    return not_measured(per), base


def baseline_config(df: pd.DataFrame, spec: Spec) -> str:
    want = spec.report.baseline
    if want:
        try:  # numbers as the trials' columns hold them: lr 1 is 1.0
            held = spec.trial_values(want, want)
            want = {k: v if isinstance(held[k], tuple) else held[k] for k, v in want.items()}
        except (TypeError, ValueError):
            pass  # a folder written before the baseline was checked: compare as written
        match = df
        for k, v in want.items():
            if k in match:
                match = match[match[k].astype(str) == str(v)]
        if not match.empty:
            return match["config"].iloc[0]
        log.warning("report.baseline %s matches no trial; using the first config", want)
    return df["config"].iloc[0]


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """True for rows no other row dominates (at least as good everywhere, better somewhere)."""
    v = np.where(maximize, -values, values)  # minimise everything
    mask = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        others = np.delete(v, i, axis=0)
        dominated = np.any(np.all(others <= v[i], axis=1) & np.any(others < v[i], axis=1))
        mask[i] = not dominated
    return mask


def pareto_front(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    # An interrupted trial's last epoch is not its result: it has more to run.
    last = final_rows(df[~df["status"].isin(["FAILED", "INTERRUPTED"])])
    cols = list(spec.search.objectives)
    last = last.dropna(subset=cols)
    if last.empty:
        return last
    mask = pareto_mask(last[cols].to_numpy(float),
                       [m == "max" for m in spec.search.objectives.values()])
    return last[mask].sort_values(cols[0], ascending=spec.search.objectives[cols[0]] == "min")


def fastest_reaching(df: pd.DataFrame, target: float) -> str:
    """Plain answer: which config first reaches `target` % test accuracy in the least train time."""
    ok = df[(df["status"] != "FAILED") & df["test_acc"].notna()]
    if ok.empty:
        return "No trial reported any result."
    hit = ok[ok["test_acc"] >= target]
    if hit.empty:
        best = ok.loc[ok["test_acc"].idxmax()]
        return (f"No configuration reached {target:g}% test accuracy. The best was "
                f"{best['test_acc']:.2f}% ({best['config']}, epoch {int(best['epoch'])}).")
    first = hit.sort_values("train_time_s").groupby("trial_index").head(1)
    win = first.sort_values("train_time_s").iloc[0]
    n_reach = first["config"].nunique()
    return (f"Fastest configuration reaching ≥ {target:g}% test accuracy: **{win['config']}** "
            f"reached {win['test_acc']:.2f}% at epoch {int(win['epoch'])} after "
            f"{win['train_time_s']:.3g} s of training ({n_reach} of "
            f"{ok['config'].nunique()} configurations reached it).")


def answer(df: pd.DataFrame, spec: Spec, run_dir: Path) -> target_mode.Answer:
    """The report's answer (`df` labelled): in target mode the race's, with its
    confidence (target.answer); else the fastest trial to report.target_acc."""
    goal = spec.search.goal
    if goal is None:
        return target_mode.Answer(fastest_reaching(df, spec.report.target_acc), [],
                                  pd.DataFrame())
    return target_mode.answer(df, target_mode.rule(spec), goal.finalists.confidence
                              if goal.finalists else 0.9, target_mode.events(run_dir))


def hardware_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[df["epoch"].notna()]
    if rows.empty:
        return pd.DataFrame()
    g = rows.groupby("trial_index", sort=True)
    out = pd.DataFrame({
        "config": g["config"].first(),
        "workers": g["num_workers"].first(),
        "threads": g["threads_per_worker"].first(),
        "gpu": g["use_gpu"].first(),
        "samples/s": g["samples_per_s"].mean().round(0),
        "data wait %": (100 * g["data_time_s"].sum(min_count=1)
                        / g["epoch_time_s"].sum()).round(1),
        "setup s": g["setup_time_s"].first().round(2),
        "wall s": g["wall_time_s"].max().round(1),
        "peak RSS MiB": g["peak_rss_mb"].max().round(0),
        "peak CUDA MiB": g["peak_cuda_mb"].max().round(0),
        "GFLOP/sample": (g["flops_per_sample"].first() / 1e9).round(4),
        "TFLOP/s": g["tflops"].mean().round(3),
        "MFU %": (100 * g["mfu"].mean()).round(1),
        "GPU util %": g["gpu_util"].mean().round(0),
        "host": g["env_host"].first() if "env_host" in rows else "",
    })
    # GPU-only columns go on a CPU sweep; a figure a trial could not measure is said so.
    gpu_only = ["peak CUDA MiB", "MFU %", "GPU util %"]
    return not_measured(out.drop(columns=[c for c in gpu_only if out[c].isna().all()]))


def not_measured(table: pd.DataFrame) -> pd.DataFrame:
    """NaN cells of measured figures, written as such: never a 0 or a blank."""
    return table.astype(object).where(table.notna(), "not measured")


def recovered_table(df: pd.DataFrame) -> pd.DataFrame:
    """Trials Tune restarted after a failure (retries), or whose sweep was resumed
    mid-trial."""
    g = df[df["epoch"].notna()].groupby("trial_index", sort=True)
    out = pd.DataFrame({"config": g["config"].first(), "status": g["status"].first(),
                        "restarts": g["retries"].max(),
                        "resumed from epoch": g["resumed_from_epoch"].max(),
                        "last restart's error": g["retry_error"].last().astype(object).fillna("")})
    hit = (out["restarts"].fillna(0) > 0) | (out["resumed from epoch"].fillna(0) > 0)
    return out[hit]


def _trains(spec: Spec) -> str:
    if spec.script is not None:
        return f"trained by the user's script (`{spec.script.command}`)"
    if spec.train.function is not None:
        return f"trained by the user's function `{spec.train.function}`"
    return f"dataset: {spec.data.dataset}"


def _notes(*names: str) -> str:
    """What the columns mean, from the metrics table."""
    return "".join(f"- {metrics.note(n)}\n" for n in names) + "\n"


def _md(table: pd.DataFrame, index: bool = True) -> str:
    if table.empty:
        return "_none_\n"
    return table.to_markdown(index=index) + "\n"


def knob_section(df: pd.DataFrame, spec: Spec, eff: pd.DataFrame) -> str:
    """The sentences, then importances and the objective's mean at each knob value."""
    if eff.empty:
        return "No knob was searched with more than one value.\n\n"
    out = "\n".join(f"- {s}" for s in effects.sentences(eff)) + "\n\n"
    out += (f"Each change is from the knob's lowest value to its highest with the other "
            f"knobs held fixed: an additive least-squares fit over the "
            f"{len(effects.finished(df))} finished trials (a numeric knob by its logarithm "
            f"where it spans 4x or more; times in per cent, accuracies in points), ± one "
            f"standard error. A change is given only when it is over {effects.Z:g} standard "
            f"errors and the trials are {effects.MIN_DOF} or more beyond the fit's terms. "
            f"Importance: the share of each objective's variance a knob explains "
            f"({effects.EVALUATOR}, Optuna's default evaluator).\n\n")
    imp = eff.pivot_table(index="knob", columns="objective", values="importance", sort=False)
    if imp.notna().any().any():
        out += _md(imp.round(2).rename(columns=lambda c: f"importance for {c}"))
    marg = effects.marginal(df, spec)
    if not marg.empty:
        marg["cell"] = [_fmt(m, sd, n, 2) + f" (n={n})"
                        for m, sd, n in zip(marg["mean"], marg["std"], marg["n"], strict=True)]
        table = marg.pivot_table(index=["knob", "level"], columns="objective", values="cell",
                                 aggfunc="first", sort=False)
        out += "\nMean ± spread of each objective at each value (raw, other knobs mixed in):\n\n"
        out += _md(table)
    return out


def target_summary(ttt: pd.DataFrame, target: float) -> str:
    reached = ttt.dropna(subset=["s_to_target"]).sort_values("s_to_target")
    if reached.empty:
        return f"Time to target: no trial reached {target:g}% test accuracy."
    return (f"Time to target ({target:g}%): {len(reached)} of {len(ttt)} trials reached it; "
            f"the fastest in {reached['s_to_target'].iloc[0]:.3g} s of training (epoch "
            f"{int(reached['epoch_to_target'].iloc[0])}, {reached['config'].iloc[0]}).")


def target_section(df: pd.DataFrame, spec: Spec, ttt: pd.DataFrame, target: float) -> str:
    """airbench's measure: each trial's training seconds and epoch to the target, and
    the same by knob value."""
    reached = ttt.dropna(subset=["s_to_target"]).sort_values("s_to_target")
    out = target_summary(ttt, target) + "\n\n"
    if reached.empty:
        return out
    out += _md(reached.head(10).set_index("config")[["epoch_to_target", "s_to_target"]]
               .rename(columns={"epoch_to_target": "epoch", "s_to_target": "train s"})
               .round(3))
    by = effects.time_to_target_by_knob(df, spec, target)
    if not by.empty:
        out += "\nBy knob value (median over the trials that reached it):\n\n"
        out += _md(by.set_index(["knob", "level"]).round(3))
    return out


def plot(df: pd.DataFrame, spec: Spec, run_dir: Path, tl: tuple) -> None:
    """The PNGs; `tl` is `page.timeline(df, commands)`. Constrained layout fits the
    labels in one pass while drawing (tight_layout and a tight bbox each draw again)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = df[df["epoch"].notna() & (df["status"] != "FAILED")]
    last = final_rows(ok)

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    if not last.empty:
        # Colour by throughput, so a point's hardware cost shows next to its accuracy.
        if "samples_per_s" in last and last["samples_per_s"].notna().any():
            pts = ax.scatter(last["train_time_s"], last["test_acc"], c=last["samples_per_s"],
                             cmap="viridis", label="trial (final epoch)")
            fig.colorbar(pts, ax=ax, label="samples/s")
        else:  # a user's script: throughput not measured, so no colour scale
            ax.scatter(last["train_time_s"], last["test_acc"], label="trial (final epoch)")
        mask = pareto_mask(last[["test_acc", "train_time_s"]].to_numpy(float), [True, False])
        front = last[mask].sort_values("train_time_s")
        ax.step(front["train_time_s"], front["test_acc"], where="post", c="tab:red",
                label="Pareto front")
        # Trial numbers, not configs (those overlap): the report's Pareto table has them.
        for k, (_, r) in enumerate(front.iterrows()):
            ax.annotate(f"#{int(r['trial_index'])}", (r["train_time_s"], r["test_acc"]),
                        fontsize=8, xytext=(5, 6 if k % 2 else -11), textcoords="offset points")
    ax.set(xlabel="train time (s)", ylabel="test accuracy (%)",
           title=f"{spec.name}: accuracy against train time")
    ax.legend(loc="lower right")
    fig.savefig(run_dir / "pareto.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for _, t in ok.groupby("trial_index"):
        ax.plot(t["epoch"], t["test_acc"], marker="o", label=t["config"].iloc[0])
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy by epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
    if ok["trial_index"].nunique() <= 12:
        ax.legend(fontsize=7)
    fig.savefig(run_dir / "acc_by_epoch.png", dpi=120)
    plt.close(fig)

    per = ok.groupby("config", sort=False)["epoch_time_s"].agg(["mean", "std"])
    title = "time per epoch by config"
    if len(per) > EPOCH_BARS:  # a bar per config of a 1,000-trial sweep is 42,000 px tall
        title = f"time per epoch: the {EPOCH_BARS} fastest of {len(per)} configs"
        per = per.nsmallest(EPOCH_BARS, "mean")
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(per) + 1)))
    if not per.empty:
        ax.barh(per.index, per["mean"], xerr=per["std"].fillna(0), color="tab:green")
    ax.set(xlabel="seconds per epoch", title=title)
    ax.tick_params(axis="y", labelsize=7)
    # A config's label names every knob: the canvas grows to it (the axes would shrink).
    fig.savefig(run_dir / "epoch_time.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    seg, slots, wall, _ = tl
    fig, ax = plt.subplots(figsize=(9, 1 + 0.5 * max(1, slots)), layout="constrained")
    colors = dict(page.PHASES)
    for (phase, slot), g in seg.groupby(["phase", "slot"]) if not seg.empty else []:
        ax.broken_barh(list(zip(g["start"], g["end"] - g["start"], strict=True)),
                       (slot - 0.3, 0.6), color=colors[phase],
                       label=phase if slot == 0 else None)
    if page.from_command(tl):
        ax.set_xlim(left=0)
    ax.set(xlabel=page.timeline_axis(page.from_command(tl)), yticks=range(max(1, slots)),
           yticklabels=[f"slot {k}" for k in range(max(1, slots))],
           title="sweep timeline: set-up, training, evaluation; white is idle")
    if not seg.empty:
        ax.legend(loc="upper right", fontsize=7)
    fig.savefig(run_dir / "timeline.png", dpi=120)
    plt.close(fig)


def build(run_dir: Path) -> Path:
    """Write report.md, report.html, knobs.csv and the plots from a results folder;
    return report.md's path."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its in-memory studies, each a line
    run_dir = Path(run_dir)
    spec, df = results.load(run_dir)
    csv = run_dir / results.TRIALS_CSV
    if not csv.is_file() or csv.stat().st_mtime < (run_dir / results.TRIALS).stat().st_mtime:
        df.to_csv(csv, index=False)  # a sweep that died kept only the parquet current
    df = label_trials(df, spec)
    target = spec.report.target_acc
    n_trials = df["trial_index"].nunique()
    counts = df.groupby("trial_index")["status"].first().value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("COMPLETED", "STOPPED", "FAILED"))
    if counts.get("INTERRUPTED", 0):
        status += f", {counts['INTERRUPTED']} INTERRUPTED"
    times, base = time_table(df, spec)
    ttt = effects.time_to_target(df, target)
    df = df.merge(ttt[["trial_index", "epoch_to_target", "s_to_target"]], on="trial_index",
                  how="left")
    front = pareto_front(df, spec)
    obj = list(spec.search.objectives)
    failed = df[df["status"] == "FAILED"].groupby("trial_index").first()
    env_cols = [c for c in df.columns if c.startswith("env_")]
    env = pd.DataFrame({c[4:]: [", ".join(sorted(map(str, df[c].dropna().unique())))]
                        for c in env_cols}).T.rename(columns={0: "value"})

    md = [f"# {spec.name}\n"]
    if spec.description:
        md.append(spec.description.strip() + "\n")
    md.append(f"{n_trials} trials ({status}); search: {spec.search.method}, "
              f"scheduler: {spec.search.scheduler}; {_trains(spec)}; "
              f"objectives: {', '.join(f'{k} ({v})' for k, v in spec.search.objectives.items())}.\n")
    if counts.get("INTERRUPTED", 0):
        md.append(f"**Interrupted**: a signal stopped the sweep before "
                  f"{counts['INTERRUPTED']} trials finished. Their epochs so far are in the "
                  "tables, not on the Pareto front; `--resume "
                  f"{run_dir.name}` goes on with them.\n")
    elif (run_dir / results.UNFINISHED).is_file():
        md.append("**Unfinished**: the sweep stopped before its end (its driver died, or "
                  "its results could not be written); these are the trials that finished "
                  f"by then. `--resume {run_dir.name}` goes on.\n")
    eff = effects.effects(df, spec)
    md.append("## Answer\n")
    found = answer(df, spec, run_dir)
    md.append(found.headline + "\n")
    md.append("".join(f"- {x}\n" for x in found.lines))
    md.append("\n" + _md(found.table.round(4)) if len(found.table) else "")
    md.append("## What each knob costs\n")
    md.append(knob_section(df, spec, eff))
    md.append(f"## Time to target ({target:g}% test accuracy)\n")
    md.append(target_section(df, spec, ttt, target))
    md.append("## Pareto-optimal configurations\n")
    md.append(f"`s_to_target`: training seconds until test accuracy first reached "
              f"{target:g}% (blank: never).\n\n")
    md.append(_md(front[["config", "trial_index", *dict.fromkeys([*obj, "epoch", "s_to_target"])]]
                  .rename(columns={"trial_index": "trial"})
                  .set_index("config").round(3) if not front.empty else front))
    md.append("## Test accuracy (%) by epoch\n")
    md.append(_md(by_epoch(df, "test_acc", 2)))
    md.append("## Test loss by epoch\n")
    md.append(_md(by_epoch(df, "test_loss", 4)))
    md.append("## Time\n")
    md.append(_notes("epoch_time_s", "train_time_s", "samples_per_s", "peak_memory_mb",
                     "cost_usd"))
    md.append(f"Speedup is s/epoch against **{base}**.\n\n" if base else "")
    md.append(_md(times))
    md.append("## Sweep timeline\n")
    tl = page.timeline(df, results.commands(run_dir))  # for report.md, the PNG and the page
    md.append(page.timeline_note(tl) + " See timeline.png, or report.html to hover.\n"
              if tl[1] else "No epoch carried a time stamp.\n")
    md.append("## Hardware per trial\n")
    md.append(_notes("samples_per_s", "data_time_s", "setup_time_s", "wall_time_s",
                     "peak_rss_mb", "peak_cuda_mb", "flops_per_sample", "tflops", "mfu",
                     "gpu_util"))
    md.append(_md(hardware_table(df)))
    md.append("## Recovered trials\n")
    md.append("Restarted from their last epoch checkpoint after a failure (a Train worker "
              "or the trial's process died, or an error Tune retried), or continued by "
              "`--resume` after the sweep was interrupted.\n\n")
    md.append(_md(recovered_table(df)))
    md.append("## Failed trials\n")
    md.append(_md(failed[["config", "error"]] if not failed.empty else pd.DataFrame()))
    md.append("## Environment\n")
    md.append(_md(env))
    md.append("## Plots\n")
    md.append("\n".join(f"![{p}]({p})" for p in PLOTS) + "\n")
    plot(df, spec, run_dir, tl)
    eff.to_csv(run_dir / KNOBS, index=False)
    out = run_dir / "report.md"
    out.write_text("\n".join(md))
    page.write(run_dir, df, spec, found.headline, effects.sentences(eff),
               target_summary(ttt, target), tl, found.lines, eff)
    return out


def _keyed(run_dir: Path) -> pd.DataFrame:
    """Rows indexed by (trial, repeat, epoch): a trial is its searched values, and
    repeats of the same values count up in trial order, so two runs line up
    whatever order their trials finished in. The whole resolved config must match."""
    spec, df = results.load(run_dir)
    df = label_trials(df, spec)
    cfg = [f.name for cls in (TrainSpec, ResourceSpec) for f in dataclasses.fields(cls)
           if f.name in df]
    df["full_config"] = [" ".join(map(str, r)) for r in df[cfg].itertuples(index=False)]
    first = df.groupby("trial_index", sort=True)["config"].first()
    df["repeat"] = df["trial_index"].map(first.groupby(first).cumcount())
    df["epoch"] = df["epoch"].fillna(0).astype(int)
    return df.set_index(["config", "repeat", "epoch"]).sort_index()


def compare(dir_a: Path, dir_b: Path) -> tuple[str, bool]:
    """Say where two results folders differ: trials, statuses, every reproducible
    metric (exactly, to the bit), then timing ratios and the environment fingerprint.
    Returns (text, whether the results are the same)."""
    a, b = _keyed(dir_a), _keyed(dir_b)
    lines, same = [], True
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    for name, only in (("A", only_a), ("B", only_b)):
        if len(only):
            same = False
            lines.append(f"only in {name}: {len(only)} epoch rows, e.g. {only[0]}")
    both = a.index.intersection(b.index)
    lines.append(f"{len(both)} epoch rows of {a.loc[both, 'trial_index'].nunique()} trials "
                 "in both")
    cols = ["full_config", "status", "error", *[c for c in RESULTS if c in a and c in b]]
    for col in cols:
        x, y = a.loc[both, col], b.loc[both, col]
        diff = ~((x == y) | (x.isna() & y.isna()))
        if diff.any():
            same = False
            i = diff[diff].index[0]
            lines.append(f"{col}: differs in {int(diff.sum())} rows, first at "
                         f"epoch {i[2]} of [{i[0]}]: {x[i]!r} vs {y[i]!r}")
    if same:
        lines.append(f"results identical: {', '.join(cols)}")
    ratios = [f"{c} {(b.loc[both, c] / a.loc[both, c]).median():.3g}"
              for c in MEASURED if c in a and c in b and a.loc[both, c].notna().any()]
    if ratios:
        lines.append("timing, median B/A (expected to vary): " + ", ".join(ratios))
    env = sorted(c for c in set(a.columns) | set(b.columns) if c.startswith("env_"))
    for c in env:
        va = sorted(map(str, a[c].dropna().unique())) if c in a else ["absent"]
        vb = sorted(map(str, b[c].dropna().unique())) if c in b else ["absent"]
        if va != vb:
            lines.append(f"environment {c[4:]}: {', '.join(va)} vs {', '.join(vb)}")
    if env and not any(ln.startswith("environment") for ln in lines):
        lines.append("environment fingerprint identical")
    return "\n".join(lines), same
