"""How a search runs (`SearchSettings`) and where it writes: the files of `--tune_dir`."""

import dataclasses
import os

from at2l_tf.errors import ConfigError, at_least

TUNERS = ("random", "bayesian", "hyperband")
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"
BEST_FLAGS_FILE = "best.flags"


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How the search runs (the rest is `SearchSpace` and `ObjectiveAttack`).

    Attributes:
        tuner: one of `TUNERS`.
        max_trials: trials in all, finished ones of a resumed search included.
        executions_per_trial: trainings per trial (seeds `seed + j`), averaged.
        tune_dir: KerasTuner's project directory.
        overwrite: delete an existing search in `tune_dir` first.
    """

    tuner: str = "random"
    max_trials: int = 10
    executions_per_trial: int = 1
    tune_dir: str = "runs/tune_mnist_at2l"
    overwrite: bool = False

    def validate(self):
        if self.tuner not in TUNERS:
            raise ConfigError(f"unknown tuner {self.tuner!r}; known tuners: {', '.join(TUNERS)}")
        at_least("max_trials", self.max_trials, 1)
        at_least("executions_per_trial", self.executions_per_trial, 1)
        if not self.tune_dir:
            raise ConfigError("tune_dir must not be empty")
        return self


def default_tune_dir(config):
    """`runs/tune_<dataset>[_<preprocessing>]_<objective>`, beside train's default workdir."""
    parts = [config.data.dataset, config.train.objective]
    if config.preprocessing.name != "none":
        parts.insert(1, config.preprocessing.name)
    return os.path.join("runs", "tune_" + "_".join(parts))


def tuner_seed(seed):
    """The seed of the tuner's own sampling: `seed + 1`, because KerasTuner takes a
    seed of 0 for "no seed" (and draws one at random, so the search would not repeat)."""
    return seed + 1


__all__ = ["BEST_FLAGS_FILE", "SEARCH_FILE", "SUMMARY_FILE", "SearchSettings", "TUNERS", "default_tune_dir",
           "tuner_seed"]
