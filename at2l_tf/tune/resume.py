"""Checks before a search writes anything: the flags, and whether `--tune_dir` holds this search.

A search records its settings in `<tune_dir>/search.json` (`search_record`).
A second run with the same `--tune_dir` resumes it if its settings are the same
(`max_trials` may grow), and is refused otherwise, with one line listing every
setting that differs (`at2l_tf.identity`); a distributed worker checks its flags
against the chief's record the same way.
"""

import dataclasses
import json
import os

from at2l_tf import identity
from at2l_tf.errors import ConfigError
from at2l_tf.tune import hypermodel as hm
from at2l_tf.tune import space as space_lib
from at2l_tf.tune.settings import SEARCH_FILE

# What a resumed search may change: the chief's count of trials decides.
_MAY_CHANGE = ("max_trials",)


def search_record(base, space, objective_attack, settings):
    """The settings a resumed search must share with the original (JSON-ready).

    Everything that changes what a trial trains or measures: the base config
    (outputs and the test-split check aside), the space, the objective, the
    tuner and the executions per trial. `max_trials` is recorded but may grow.
    """
    cfg = base.to_dict()
    for key in ("workdir", "export_dir", "eval"):
        cfg.pop(key)
    record = {
        "base_config": cfg,
        "search_space": space.record(),
        "tuned": list(space.tuned(base.train.objective, base.train.lambda2)),
        "objective": {
            "metric": space_lib.OBJECTIVE_METRIC,
            "direction": "max",
            **dataclasses.asdict(objective_attack),
            "eps": base.eps,
            "split": "validation",
        },
        "tuner": settings.tuner,
        "executions_per_trial": settings.executions_per_trial,
        "max_trials": settings.max_trials,
    }
    return json.loads(json.dumps(record))  # Tuples as lists, as read back from disk.


def validate(base, space, objective_attack, settings):
    """Checks everything before anything is written.

    Returns:
        `"new"`, `"resume"` or `"overwrite"`: what will happen to `tune_dir`.

    Raises:
        ConfigError: naming the first bad value, or a `tune_dir` that holds
            something other than this search.
    """
    validate_flags(base, space, objective_attack, settings)
    return check_tune_dir(settings.tune_dir, search_record(base, space, objective_attack, settings),
                          settings.overwrite)


def validate_flags(base, space, objective_attack, settings):
    """The checks of `validate` that do not look at `tune_dir` (a worker's too)."""
    settings.validate()
    base.validate()
    if settings.tuner == "hyperband" and base.train.epochs < 2:
        raise ConfigError(
            "tuner=hyperband trains trials for 1 to --epochs epochs: it needs epochs >= 2, "
            f"received epochs={base.train.epochs}"
        )
    if base.train.strategy == "multi_worker":
        raise ConfigError("the tune command runs on one machine: use --strategy=auto, default or mirrored")
    space.validate(base.train.objective, base.train.lambda2)
    check_trial_configs(base, space)
    objective_attack.validate(base)


def check_trial_configs(base, space):
    """Validates the base config under each objective, features and negative choice of
    `space` (e.g. `embedding` on a model without a penultimate layer), before any trial."""
    hypermodel = hm.AT2LHyperModel(base, space, space_lib.ObjectiveAttack())
    for objective in space.objectives or (base.train.objective,):
        for features in space.triplet_features or (None,):
            for negative in space.triplet_negatives or (None,):
                values = {"objective": objective, "triplet_features": features, "triplet_negative": negative}
                cfg = hypermodel.config_for({k: v for k, v in values.items() if v is not None})
                try:
                    cfg.validate()
                except ConfigError as e:
                    raise ConfigError(f"a trial with objective={objective!r} is invalid: {e}") from None


def check_tune_dir(path, record, overwrite):
    """What to do with `path` (see `validate`); reads, never writes."""
    if not os.path.exists(path):
        return "new"
    if not os.path.isdir(path):
        raise ConfigError(f"tune_dir {path} exists and is not a directory")
    if not os.listdir(path):
        return "new"
    marker = os.path.join(path, SEARCH_FILE)
    if not os.path.exists(marker):
        # Never delete a directory this command did not make, even with --overwrite.
        raise ConfigError(
            f"tune_dir {path} is not empty and holds no {SEARCH_FILE} (not a tune search): "
            "choose another --tune_dir"
        )
    if overwrite:
        return "overwrite"
    previous = identity.read(marker, "pass --overwrite to start again")
    identity.require_same(
        previous, record, where=f"tune_dir {path}", what="a search", ignore=_MAY_CHANGE,
        remedy="use the same flags to resume it, --overwrite to restart it, or another --tune_dir",
    )
    return "resume"


def check_worker_dir(path, record, role):
    """Checks that `path` holds the chief's search with `record`'s settings
    (`max_trials` aside: the chief's counts); reads, never writes."""
    marker = os.path.join(path, SEARCH_FILE)
    previous = identity.read(marker, "is it the chief's search?")
    if previous is None:
        raise ConfigError(
            f"the chief at {role.address} answered but {marker} does not exist: a worker needs the chief's "
            "--tune_dir (on the chief's machine or a shared filesystem)"
        )
    # Not "the directory holds another run" but "this worker is not the chief's": its own words.
    diffs = identity.differences(previous, record, ignore=_MAY_CHANGE)
    if diffs:
        raise ConfigError(
            f"this worker's flags differ from the chief's search in {path} ({'; '.join(diffs)}): start every "
            "worker with the chief's flags"
        )


__all__ = ["check_trial_configs", "check_tune_dir", "check_worker_dir", "search_record", "validate",
           "validate_flags"]
