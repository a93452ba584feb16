"""The Optuna samplers a sweep's searcher uses, made to survive pickling.

Ray Tune pickles the searcher, its Optuna sampler included, when the Tuner is made
(tuner.pkl) and at every experiment checkpoint, and unpickles it on --resume. A
sampler that cannot be pickled stops the sweep before its first trial.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable. Optuna 5.1 gave the GA samplers a thread lock
    and no __getstate__; the lock guards a cache, so a copy gets a fresh one, as
    Optuna's own InMemoryStorage and _CachedStorage do."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "_thread_lock" in state:
            state["_thread_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_thread_lock" in state:
            self._thread_lock = threading.Lock()


# BaseGASampler.__init_subclass__ names a subclass's study attributes after the class
# ("<Class>:generation"); a rename of this class would lose them. Keep NSGA-II's
# own names, so a study written by Optuna's sampler, or before this class, keeps its
# generations when resumed.
NSGAIISampler._GENERATION_KEY = optuna.samplers.NSGAIISampler._GENERATION_KEY
NSGAIISampler._PARENT_CACHE_KEY_PREFIX = optuna.samplers.NSGAIISampler._PARENT_CACHE_KEY_PREFIX


def for_objectives(n_objectives: int, seed: int, **kwargs: Any) -> optuna.samplers.BaseSampler:
    """TPE for one objective, NSGA-II for two or more (accuracy against time)."""
    if n_objectives > 1:
        return NSGAIISampler(seed=seed, **kwargs)
    return optuna.samplers.TPESampler(seed=seed, **kwargs)
