"""What each knob costs: for every searched knob and every objective, its importance
(Optuna's evaluator over the trials) and its marginal effect (the objective's mean
and spread at each value, or in bins of a continuous knob), put in one sentence with
the numbers, or a plain "cannot be told from noise" where the trials are too few.
And time to target, as airbench measures it: the training seconds and the epoch at
which each trial first reached the report's target accuracy.

Built from the trials table (one row per trial per epoch) and the spec only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raytune_ctr.metrics import METRICS
from raytune_ctr.spec import Spec

EVALUATOR = "fANOVA"  # Optuna's default importance evaluator (a random forest's variance)
BINS = 3  # a continuous knob's values in this many quantile bins
Z = 2.0  # an effect is told from noise when it is this many standard errors away from 0
MIN_DOF = 4  # trials beyond the fit's terms, for its noise estimate to mean anything


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Each finished trial's last epoch: what it reached (FAILED and INTERRUPTED left out)."""
    ok = df[df["epoch"].notna() & ~df["status"].isin(["FAILED", "INTERRUPTED"])]
    return ok.sort_values("epoch").groupby("trial_index").tail(1).sort_values("trial_index")


def knobs(spec: Spec) -> list[str]:
    return [k for k in spec.searched_keys() if k != "seed"]


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _continuous(values: pd.Series) -> bool:
    return _numeric(values) and values.nunique() > 4 and not pd.api.types.is_integer_dtype(values)


def levels(last: pd.DataFrame, knob: str) -> pd.Series:
    """The level of each trial for `knob`: its value, or the quantile bin of a
    continuous knob ("0.2-0.45"), as an ordered categorical."""
    v = last[knob]
    if _continuous(v):
        bins = pd.qcut(v, q=min(BINS, v.nunique()), duplicates="drop")
        names = [f"{b.left:.3g}–{b.right:.3g}" for b in bins.cat.categories]
        return bins.cat.rename_categories(names)
    order = sorted(v.dropna().unique(), key=lambda x: (not _numeric(v), x if _numeric(v) else str(x)))
    return pd.Categorical(v.map(str) if not _numeric(v) else v, categories=[
        str(o) if not _numeric(v) else o for o in order], ordered=True)


def marginal(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """knob, level, objective, mean, std, n: the objective over the trials at each level."""
    last, rows = finished(df), []
    for knob in knobs(spec):
        if knob not in last or last[knob].nunique() < 2:
            continue
        lv = levels(last, knob)
        for obj in spec.search.objectives:
            g = last.assign(_level=lv).groupby("_level", observed=True)[obj]
            for level, vals in g:
                vals = vals.dropna()
                rows.append({"knob": knob, "level": str(level), "objective": obj,
                             "mean": vals.mean(), "std": vals.std(ddof=1) if len(vals) > 1
                             else float("nan"), "n": len(vals)})
    return pd.DataFrame(rows, columns=["knob", "level", "objective", "mean", "std", "n"])


SHOWN = ("config", "epoch", "test_acc", "train_time_s", "s_to_target", "samples_per_s",
         "peak_memory_mb", "mfu", "gpu_util", "cost_usd")  # on each trial, for plots' hover


def optuna_study(last: pd.DataFrame, spec: Spec, names: list[str] | None = None):
    """The finished trials (`finished`) as an in-memory Optuna study: the knobs as
    params (a numeric one with more than 4 values as a float range), the objectives as
    values (named), the `SHOWN` metrics as user attributes. For Optuna's importance
    evaluators and plots."""
    import warnings

    import optuna

    names = [k for k in knobs(spec) if k in last] if names is None else names
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for k in names:
        v = last[k]
        if v.dropna().empty:  # no finished trial (every one FAILED): no distribution
            continue
        if _numeric(v) and v.nunique() > 4:
            lo, hi = float(v.min()), float(v.max())
            dists[k] = optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 20)
        else:
            dists[k] = optuna.distributions.CategoricalDistribution(
                sorted(v.dropna().unique().tolist(), key=str))
    objectives = list(spec.search.objectives)
    study = optuna.create_study(directions=["maximize" if spec.search.objectives[o] == "max"
                                            else "minimize" for o in objectives])
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)  # the plots' axis and legend names
    for _, r in last.iterrows():
        values = [float(r[o]) for o in objectives]
        if any(math.isnan(x) for x in values):
            continue
        params = {k: float(r[k]) if isinstance(d, optuna.distributions.FloatDistribution)
                  else _item(r[k]) for k, d in dists.items()}
        attrs = {c: _item(r[c], 4) for c in SHOWN if c in r and pd.notna(r[c])}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  values=values, user_attrs=attrs))
    return study


def _item(v, digits: int | None = None):
    """A plain Python value (Optuna stores JSON), floats rounded to `digits` if given."""
    v = v.item() if hasattr(v, "item") else v
    return round(v, digits) if digits is not None and isinstance(v, float) else v


def importances(df: pd.DataFrame, spec: Spec, seed: int = 0) -> pd.DataFrame:
    """knob, objective, importance (shares that sum to 1 per objective), from Optuna's
    fANOVA over the finished trials. Empty when there are fewer than 3 of them or one
    knob: an importance needs a spread to share out."""
    import optuna

    last = finished(df)
    names = [k for k in knobs(spec) if k in last and last[k].nunique() > 1]
    cols = ["knob", "objective", "importance", "evaluator"]
    if len(last) < 3 or not names:
        return pd.DataFrame(columns=cols)
    objectives = list(spec.search.objectives.items())
    study = optuna_study(last, spec, names)
    rows = []
    for i, (obj, mode) in enumerate(objectives):
        # Each objective as "higher is better", so an evaluator that ranks by the low
        # end (PED-ANOVA) reads maximised and minimised ones alike; fANOVA does not care.
        def target(t, i=i, mode=mode):
            return t.values[i] if mode == "max" else -t.values[i]
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        try:
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                          target=target)
        except (RuntimeError, ValueError, ZeroDivisionError):  # no spread at all
            continue
        rows += [{"knob": k, "objective": obj, "importance": float(v), "evaluator": EVALUATOR}
                 for k, v in imp.items()]
    return pd.DataFrame(rows, columns=cols)


def _term(v: pd.Series) -> tuple[np.ndarray, str]:
    """A numeric knob's term in the fit: its logarithm where it spans a factor of 4 or
    more (batch size, learning rate: effects go by ratios), else its value."""
    x = v.to_numpy(float)
    if (x > 0).all() and x.max() / x.min() >= 4:
        return np.log(x), "log"
    return x, "linear"


def effects(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Per knob and objective: the change from the knob's lowest value to its highest
    (a categorical knob: from its first value to its last, sorted) with the other
    knobs held fixed, from an additive least-squares fit over the finished trials;
    the change's standard error; whether it stands out of the noise (over `Z`
    standard errors, with at least `MIN_DOF` trials more than the fit has terms);
    and the knob's importance.

    In the fit a numeric knob is one term (its logarithm where it spans a factor of 4
    or more), a categorical one a term per value. A percentage objective changes in
    points; any other in per cent (the fit is on its logarithm, so a knob that
    doubles the time is +100% whatever the other knobs are). The raw means per value
    (`marginal`) mix in the other knobs where a search did not balance them; the fit
    takes them out."""
    last, imp = finished(df), importances(df, spec)
    names = [k for k in knobs(spec) if k in last and last[k].nunique() > 1]
    rows = []
    for obj in spec.search.objectives:
        data = last.dropna(subset=[obj])
        y = data[obj].to_numpy(float)
        points = (METRICS.get(obj) is not None and METRICS[obj].unit == "%") or (y <= 0).any()
        if not points:
            y = np.log(y)
        # knob -> (its column, span of its term, lowest, highest, trials at each end
        # of a categorical knob)
        design = [np.ones(len(data))]
        spans: dict[str, tuple[int, float, str, str, tuple[int, int] | None]] = {}
        cols: dict[str, list[int]] = {}  # each knob's columns in the design
        # Only the knobs that vary among this objective's trials (a metric some trials
        # could not report leaves fewer).
        here = [k for k in names if data[k].nunique() > 1]
        for k in here:
            v = data[k]
            start = len(design)
            if _numeric(v):
                x, _ = _term(v)
                spans[k] = (len(design), float(x.max() - x.min()), str(_plain(v.min())),
                            str(_plain(v.max())), None)
                design.append(x)
            else:
                cats = sorted(v.dropna().map(str).unique())
                first = len(design)
                design += [(v.map(str) == c).to_numpy(float) for c in cats[1:]]
                counts = v.map(str).value_counts()
                spans[k] = (first + len(cats) - 2, 1.0, cats[0], cats[-1],
                            (int(counts[cats[0]]), int(counts[cats[-1]])))
            cols[k] = list(range(start, len(design)))
        # An ASHA-stopped trial ran fewer epochs: hold the epochs reached fixed as well,
        # so the knobs are not credited with the time and accuracy of stopping early.
        if data["epoch"].nunique() > 1:
            design.append(np.log(data["epoch"].to_numpy(float)))
        x = np.column_stack(design)
        rank = np.linalg.matrix_rank(x)
        # A knob whose columns the others already span (points that move it with
        # another knob) has no effect of its own to estimate.
        tied = {k for k in here
                if np.linalg.matrix_rank(np.delete(x, cols[k], axis=1)) == rank}
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        dof = len(y) - rank
        cov = (float(((y - x @ coef) ** 2).sum()) / dof) * np.linalg.pinv(x.T @ x) \
            if dof >= MIN_DOF else None
        for k in here:
            j, span, a, b, ends = spans[k]
            change = float(coef[j]) * span
            se = math.sqrt(max(cov[j, j], 0.0)) * abs(span) \
                if cov is not None and k not in tied else float("nan")
            if not points:  # on the logarithm: back to per cent of the lowest value's
                change, se = (math.exp(change) - 1) * 100, math.exp(change) * se * 100
            few_at_ends = ends is not None and min(ends) < 2
            told = not math.isnan(se) and not few_at_ends and abs(change) > Z * se
            hit = imp[(imp["knob"] == k) & (imp["objective"] == obj)]
            rows.append({
                "knob": k, "objective": obj, "from": a, "to": b, "change": change,
                "change_se": se, "unit": "points" if points else "%",
                "told_from_noise": told, "few_at_ends": few_at_ends, "tied": k in tied,
                "trials": len(y), "terms": x.shape[1],
                "importance": float(hit["importance"].iloc[0]) if len(hit) else np.nan,
                "evaluator": EVALUATOR if len(hit) else ""})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {k: i for i, k in enumerate(names)}
    return out.sort_values("knob", key=lambda c: c.map(order), kind="stable") \
        .reset_index(drop=True)


def _plain(v):
    v = _item(v)
    return f"{v:.3g}" if isinstance(v, float) else v


def _label(obj: str) -> str:
    return obj.replace("_s", "").replace("_", " ") if obj.endswith("_s") else obj.replace("_", " ")


def _signed(x: float, fmt: str) -> str:
    return ("−" if x < 0 else "+") + format(abs(x), fmt)


def sentences(eff: pd.DataFrame) -> list[str]:
    """One plain sentence per knob, with the numbers: "`batch_size` 16→128: −3.1 points
    test acc (±0.4), −71% train time (±6%)"; and which objectives it cannot be told
    from noise for."""
    out: list[str] = []
    if eff.empty:  # no knob searched with two values or more
        return out
    for knob, g in eff.groupby("knob", sort=False):
        parts, noise = [], []
        for _, r in g.iterrows():
            name = _label(r["objective"])
            if not r["told_from_noise"]:
                if r["tied"]:
                    why = "it moves together with another knob in these trials"
                elif r["few_at_ends"]:
                    why = "one trial at an end"
                elif math.isnan(r["change_se"]):
                    why = f"{r['trials']} trials are too few to fit {r['terms']} terms"
                else:
                    fmt = ".2g" if abs(r["change"]) < 10 else ".0f"
                    why = (f"{_signed(r['change'], fmt)}"
                           f"{' points' if r['unit'] == 'points' else '%'} is within "
                           f"{Z:g} standard errors")
                noise.append(f"{name} ({why})")
            elif r["unit"] == "points":
                parts.append(f"{_signed(r['change'], '.1f')} points {name} "
                             f"(±{r['change_se']:.1f})")
            else:
                parts.append(f"{_signed(r['change'], '.0f')}% {name} (±{r['change_se']:.2g}%)")
        text = f"`{knob}` {g['from'].iloc[0]}→{g['to'].iloc[0]}: " + ", ".join(parts)
        if noise:
            text += ("; " if parts else "") + "cannot be told from noise for " + ", ".join(noise)
        out.append(text + ".")
    return out


def time_to_target(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per trial (finished or stopped): the first epoch at which test accuracy reached
    `target` and the training seconds it took; NaN where it never did."""
    ok = df[df["epoch"].notna() & df["test_acc"].notna() & (df["status"] != "FAILED")]
    ok = ok.sort_values("epoch", kind="stable")  # a trial's first row: its first epoch
    first = ok.drop_duplicates("trial_index").set_index("trial_index").sort_index()
    hit = ok[ok["test_acc"] >= target].drop_duplicates("trial_index").set_index("trial_index")
    return pd.DataFrame({
        "trial_index": first.index,
        "config": first["config"].to_numpy() if "config" in ok else "",
        "epoch_to_target": hit["epoch"].reindex(first.index).astype(float).to_numpy(),
        "s_to_target": hit["train_time_s"].reindex(first.index).astype(float).to_numpy()},
        columns=["trial_index", "config", "epoch_to_target", "s_to_target"])


def time_to_target_by_knob(df: pd.DataFrame, spec: Spec, target: float) -> pd.DataFrame:
    """knob, level, trials, reached, median s and epoch to target at each level."""
    ttt = time_to_target(df, target).set_index("trial_index")
    last, rows = finished(df).set_index("trial_index"), []
    last = last[last.index.isin(ttt.index)]
    for knob in knobs(spec):
        if knob not in last or last[knob].nunique() < 2:
            continue
        lv = pd.Series(levels(last.reset_index(), knob), index=last.index)
        for level, idx in lv.groupby(lv, observed=True).groups.items():
            t = ttt.loc[idx]
            rows.append({"knob": knob, "level": str(level), "trials": len(t),
                         "reached": int(t["s_to_target"].notna().sum()),
                         "median_s_to_target": t["s_to_target"].median(),
                         "median_epoch_to_target": t["epoch_to_target"].median()})
    return pd.DataFrame(rows, columns=["knob", "level", "trials", "reached",
                                       "median_s_to_target", "median_epoch_to_target"])
