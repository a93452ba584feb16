"""Every searcher a sweep can build survives what Tune does to it: a pickle when the
Tuner is made and at each experiment checkpoint, and save/restore on --resume. No
Ray cluster: the searchers are driven as Tune's controller drives them."""

import pickle

import optuna
import pytest

from raytune_ctr import checks, samplers, tuner
from raytune_ctr.results import Results

SPACE = {"lr": {"loguniform": [0.01, 1.0]}, "batch_size": {"choice": [32, 64]}}
SPECS = {
    "grid": {"method": "grid", "grid": {"lr": [0.1, 0.2]}},
    "random": {"method": "random", "space": SPACE, "num_samples": 4},
    "optuna-tpe": {"method": "optuna", "space": SPACE, "num_samples": 4},
    "optuna-nsga2": {"method": "optuna", "space": SPACE, "num_samples": 4,
                     "objectives": {"test_acc": "max", "train_time_s": "min"}},
}


def _searcher(tmp_path, search: dict):
    spec = checks.from_dict({"name": "s", "search": search})
    where = Results(str(tmp_path), "s")
    where.local.mkdir(parents=True, exist_ok=True)
    space, searcher, num_samples = tuner._search(spec, where, concurrency=2)
    return spec, space, searcher, num_samples


def _as_tune_runs_it(tmp_path, spec, space, searcher, num_samples):
    """The search algorithm as tune.run sets it up: a Searcher wrapped in a
    SearchGenerator, told the metric, mode and space, given the experiment."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import Searcher, SearchGenerator

    alg = SearchGenerator(searcher) if isinstance(searcher, Searcher) else searcher
    objectives = spec.search.objectives
    if len(objectives) > 1:
        metric, mode = list(objectives), list(objectives.values())
    else:
        metric, mode = next(iter(objectives.items()))
    alg.set_search_properties(metric, mode, space)
    alg.add_configurations([Experiment("s", _trainable, config=space,
                                       num_samples=num_samples, storage_path=str(tmp_path / "tune"))])
    return alg


def _trainable(config):
    pass


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_searcher_survives_tunes_pickles_and_still_suggests(tmp_path, kind):
    spec, space, searcher, n = _searcher(tmp_path, SPECS[kind])
    searcher = pickle.loads(pickle.dumps(searcher))  # the Tuner's tuner.pkl
    alg = _as_tune_runs_it(tmp_path, spec, space, searcher, n)
    first = alg.next_trial()
    assert first is not None and "lr" in first.config, f"{kind}: no first trial"
    alg.on_trial_complete(first.trial_id, {m: 0.5 for m in spec.search.objectives}
                          | {"config": first.config})
    # An experiment checkpoint, then --resume: a new searcher restored from it.
    alg.save_to_dir(str(tmp_path), session_str="x")
    spec, space, again, n = _searcher(tmp_path, SPECS[kind])
    resumed = _as_tune_runs_it(tmp_path, spec, space, pickle.loads(pickle.dumps(again)), n)
    resumed.restore_from_dir(str(tmp_path))
    nxt = resumed.next_trial()
    assert nxt is not None and "lr" in nxt.config, f"{kind}: nothing suggested after resume"


@pytest.mark.parametrize("n_objectives", [1, 2])
def test_every_optuna_sampler_pickles_and_asks(n_objectives):
    sampler = samplers.for_objectives(n_objectives, seed=0)
    study = optuna.create_study(directions=["maximize"] * n_objectives, sampler=sampler)
    study.optimize(lambda t: [t.suggest_float("x", 0, 1)] * n_objectives, n_trials=3)
    copy = pickle.loads(pickle.dumps(sampler))
    study.sampler = copy
    trial = study.ask()
    assert 0 <= trial.suggest_float("x", 0, 1) <= 1


def test_nsga2_keeps_optunas_own_study_attribute_names():
    assert samplers.NSGAIISampler._GENERATION_KEY \
        == optuna.samplers.NSGAIISampler._GENERATION_KEY == "NSGAIISampler:generation"
    assert samplers.NSGAIISampler._PARENT_CACHE_KEY_PREFIX \
        == optuna.samplers.NSGAIISampler._PARENT_CACHE_KEY_PREFIX


def _generations(study) -> list[int]:
    return [t.system_attrs["NSGAIISampler:generation"]
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def test_a_resumed_nsga2_study_keeps_its_generation_numbers(tmp_path):
    """Resume as Tune does: the sampler comes back from a pickle, the study from its
    journal, and the next trials go on from the last generation, not from 0."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal")))

    def objective(t):
        x = t.suggest_float("x", 0, 1)
        return x, 1 - x

    sampler = samplers.for_objectives(2, seed=0, population_size=4)
    study = optuna.create_study(study_name="s", storage=storage, sampler=sampler,
                                directions=["maximize", "maximize"])
    study.optimize(objective, n_trials=8)
    assert _generations(study) == [0] * 4 + [1] * 4
    saved = pickle.dumps(sampler)

    # The storage comes back from Tune's pickle too, and reads the journal file again.
    resumed = optuna.load_study(study_name="s", storage=pickle.loads(pickle.dumps(storage)),
                                sampler=pickle.loads(saved))
    resumed.optimize(objective, n_trials=4)
    assert _generations(resumed) == [0] * 4 + [1] * 4 + [2] * 4
    # Optuna's own NSGA-II reads the same record the same way.
    plain = optuna.load_study(study_name="s", storage=storage,
                              sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=4))
    plain.optimize(objective, n_trials=4)
    assert _generations(plain)[-4:] == [3] * 4
