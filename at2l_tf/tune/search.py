"""The search: one machine, a distributed chief or a distributed worker, each a `Search`.

`run_search` does what every role does, in order: check (each role its own
way), decide the precision, build the hypermodel, the reporter and the
KerasTuner tuner, then let the role announce, run and finish. The three roles
differ in those steps only:

* `LocalSearch` (one machine): checks the flags and `--tune_dir` (`resume`),
  writes `search.json`, runs every trial itself and writes the outputs.
* `ChiefSearch`: as `LocalSearch`, and checks that it can listen on its
  address; runs no trial but serves them to the workers
  (`distributed.serve`), logging and reporting each one as it ends.
* `WorkerSearch`: checks the flags only, waits for the chief and checks its
  flags against the chief's `search.json`; runs the trials the chief hands
  out and writes no `summary.json`, `best.flags` or table.
"""

import contextlib
import logging
import os
import shutil
import sys

import keras_tuner
import tensorflow as tf

from at2l_tf import fileio
from at2l_tf.errors import ConfigError
from at2l_tf.log import log
from at2l_tf.training import distribute
from at2l_tf.tune import distributed, resume
from at2l_tf.tune import space as space_lib
from at2l_tf.tune.hypermodel import AT2LHyperModel
from at2l_tf.tune.report import HYPERPARAMETERS, SYMBOLS, Reporter
from at2l_tf.tune.settings import SEARCH_FILE, tuner_seed


class Search:
    """One role's part of a search: `check`, `announce`, `run`, `finish`.

    Args:
        base, space, objective_attack, settings: as for `run_search`.
        role: the `distributed.TunerRole`, None on one machine.
    """

    writes_outputs = True  # search.json, summary.json and best.flags.

    def __init__(self, base, space, objective_attack, settings, role=None):
        self.base, self.space, self.objective_attack, self.settings = base, space, objective_attack, settings
        self.role = role
        self.record = resume.search_record(base, space, objective_attack, settings)

    def check(self):
        """Validates before anything is written; returns `"new"`, `"resume"` or `"overwrite"`."""
        return resume.validate(self.base, self.space, self.objective_attack, self.settings)

    def announce(self, tuner, reporter, mode):
        """Logs what the search will do (after the tuner has loaded any earlier state)."""
        # The constructor's value, not the saved state's, counts: a resumed search may be
        # extended; Hyperband has no cap of its own (its budget comes from max_epochs).
        tuner.oracle.max_trials = self.settings.max_trials
        reporter.load_durations()
        base, space, settings = self.base, self.space, self.settings
        done = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
        uses = {n for o in space.objectives or (base.train.objective,) for n in space_lib.used_by(o, base.train.lambda2)}
        log(
            f"{self._who()}{'resuming' if mode == 'resume' else 'starting'} a {settings.tuner} search of "
            f"{_tuned(reporter.hypermodel)} in {settings.tune_dir}: {done} of {settings.max_trials} trials done; "
            f"objective {space_lib.OBJECTIVE_METRIC} under {self.objective_attack.describe(base.eps)} on the "
            f"first {self.objective_attack.num_examples} validation images"
        )
        untuned = [n for n in space_lib.ALL_HYPERPARAMETERS
                   if n in uses and n not in reporter.hypermodel.tuned and n != "objective"]
        unused = [n for n in HYPERPARAMETERS if n not in uses]
        if untuned:
            log(f"kept from the base flags: {', '.join(f'{SYMBOLS[n]}={getattr(base.train, n)}' for n in untuned)}")
        if unused:
            which = ", ".join(space.objectives) if space.objectives else base.train.objective
            log(f"objective={which} does not use {', '.join(SYMBOLS[n] for n in unused)}: not tuned")

    def run(self, tuner, reporter):
        """Runs the trials (or, on a chief, serves them)."""
        tuner.search(verbose=0)

    def finish(self, tuner, reporter):
        """Returns the summary written to `summary.json` (None where none is written)."""
        return reporter.write(tuner)

    def _who(self):
        return ""


class LocalSearch(Search):
    """A search on one machine: this process checks, runs every trial and reports."""


class ChiefSearch(Search):
    """The chief of a distributed search: serves the trials, runs none, reports all."""

    def check(self):
        mode = super().check()
        distributed.check_chief_port(self.role)
        return mode

    def run(self, tuner, reporter):
        distributed.serve(tuner, reporter, self.role)

    def _who(self):
        return f"{self.role.describe()}: "


class WorkerSearch(Search):
    """A worker of a distributed search: runs the chief's trials; the chief reports."""

    writes_outputs = False

    def __init__(self, *args, wait_for_chief_s=600, **kwargs):
        super().__init__(*args, **kwargs)
        self.wait_for_chief_s = wait_for_chief_s

    def check(self):
        resume.validate_flags(self.base, self.space, self.objective_attack, self.settings)
        if self.settings.overwrite:
            raise ConfigError("--overwrite is the chief's: a worker runs the chief's search as it is")
        wait = self.wait_for_chief_s
        if wait is None or wait < 0:
            raise ConfigError(f"wait_for_chief must be >= 0 seconds, received wait_for_chief={wait}")
        log(f"{self.role.describe()}: waiting for the chief (up to {wait:g} s)")
        distributed.wait_for_chief(self.role, wait)
        resume.check_worker_dir(self.settings.tune_dir, self.record, self.role)
        return "worker"

    def announce(self, tuner, reporter, mode):
        # The oracle is the chief's (a proxy without `trials`); so are max_trials and the outputs.
        log(
            f"{self.role.describe()}: running trials of the chief's {self.settings.tuner} search of "
            f"{_tuned(reporter.hypermodel)} in {self.settings.tune_dir}; the chief writes summary.json and "
            "best.flags"
        )

    def finish(self, tuner, reporter):
        log(f"{self.role.describe()}: the chief has no more trials; this worker ran trials: "
            f"{', '.join(reporter.ran) or 'none'}")
        return None


def make_search(base, space, objective_attack, settings, role=None, *, wait_for_chief_s=600):
    """The `Search` of `role` (`distributed.tuner_role()`; None: one machine)."""
    if role is None:
        return LocalSearch(base, space, objective_attack, settings)
    if role.chief:
        return ChiefSearch(base, space, objective_attack, settings, role)
    return WorkerSearch(base, space, objective_attack, settings, role, wait_for_chief_s=wait_for_chief_s)


def run_search(base, space, objective_attack, settings, *, base_flags=(), verbose=2, wait_for_chief_s=600):
    """Validates, then runs (or resumes) the search and writes its outputs.

    On one machine, or as the chief or a worker of a distributed search when
    KerasTuner's environment variables are set (`distributed.tuner_role`; see
    `python -m at2l_tf.tune --help`): the chief serves the trials and writes
    the outputs, a worker runs trials and writes none.

    Args:
        base: the base `ExperimentConfig`.
        space: a `space.SearchSpace`.
        objective_attack: a `space.ObjectiveAttack`.
        settings: a `settings.SearchSettings`.
        base_flags: `[(name, "--name=value")]`, the train flags of `base`,
            from which `best.flags` is written; empty skips `best.flags`.
        verbose: Keras verbosity of each trial's `fit`.
        wait_for_chief_s: a worker's wait for the chief's oracle, in seconds.

    Returns:
        `(tuner, summary)`: the KerasTuner tuner (e.g. `tuner.get_best_models()`)
        and the dict written to `summary.json` (None on a worker).
    """
    search = make_search(base, space, objective_attack, settings, distributed.tuner_role(),
                         wait_for_chief_s=wait_for_chief_s)
    mode = search.check()
    strategy = distribute.make_strategy(base.train.strategy)
    hypermodel = AT2LHyperModel(base, space, objective_attack, verbose=verbose)
    log(hypermodel.precision.describe())
    if hypermodel.precision.warning:
        log(f"warning: {hypermodel.precision.warning}")
    reporter = Reporter(settings, base, objective_attack, search.record, dict(base_flags), hypermodel)
    reporter.writes = search.writes_outputs
    if mode == "overwrite":  # check_tune_dir made sure it holds a search of ours.
        shutil.rmtree(settings.tune_dir)
    if search.writes_outputs:
        # Written first, so that the directory is recognised as a search from the start
        # (and, on a chief, before the workers can reach it: they compare their flags with it).
        fileio.atomic_write_json(os.path.join(settings.tune_dir, SEARCH_FILE), search.record)
    tuner = make_tuner(settings, hypermodel, None if strategy is tf.distribute.get_strategy() else strategy)
    tuner.at2l_reporter = reporter
    search.announce(tuner, reporter, mode)
    retracing = _RetracingFilter()
    tf.get_logger().addFilter(retracing)
    try:
        search.run(tuner, reporter)
    finally:
        tf.get_logger().removeFilter(retracing)
    return tuner, search.finish(tuner, reporter)


def make_tuner(settings, hypermodel, strategy=None):
    """The KerasTuner tuner of `settings.tuner` over `hypermodel`, in `settings.tune_dir`
    (reloading the search found there)."""
    base = hypermodel.base_config
    tune_dir = os.path.abspath(settings.tune_dir)
    common = dict(
        hypermodel=hypermodel,
        objective=space_lib.objective(),
        seed=tuner_seed(base.train.seed),
        executions_per_trial=settings.executions_per_trial,
        directory=os.path.dirname(tune_dir),
        project_name=os.path.basename(tune_dir),
        overwrite=False,
        distribution_strategy=strategy,
    )
    cls = _tuner_class(settings.tuner)
    # KerasTuner prints "Reloading Tuner from ..." on stdout: keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        if settings.tuner == "hyperband":
            return cls(max_epochs=base.train.epochs, factor=3, **common)
        return cls(max_trials=settings.max_trials, **common)


def _tuned(hypermodel):
    return ", ".join(SYMBOLS[n] for n in hypermodel.tuned)


class _RetracingFilter(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warnings.

    Every trial builds a new model, so Keras' train and test steps and the
    attacks are traced once per trial by design; TensorFlow counts those
    traces across trials and warns (twice, through two loggers) from the
    third trial on.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def _tuner_class(name):
    base = {
        "random": keras_tuner.RandomSearch,
        "bayesian": keras_tuner.BayesianOptimization,
        "hyperband": keras_tuner.Hyperband,
    }[name]

    class Tuner(base):
        """The KerasTuner tuner with a line on stderr at each trial's start and end,
        and `summary.json` / `best.flags` rewritten after every trial."""

        at2l_reporter = None

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            if self.at2l_reporter is not None:
                self.at2l_reporter.begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # Scores and saves the trial.
            if self.at2l_reporter is not None:
                self.at2l_reporter.end(self, trial)

        def _get_tuner_fname(self):
            # One name for the chief and a search on one machine (see distributed.TUNER_STATE_FILE);
            # a worker keeps KerasTuner's own, after its ID (it holds no oracle state).
            if self._is_worker():
                return super()._get_tuner_fname()
            return os.path.join(str(self.project_dir), distributed.TUNER_STATE_FILE)

    Tuner.__name__ = Tuner.__qualname__ = f"Logged{base.__name__}"
    return Tuner


__all__ = ["ChiefSearch", "LocalSearch", "Search", "WorkerSearch", "make_search", "make_tuner", "run_search"]
