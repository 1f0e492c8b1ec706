r"""Search AT²L's λ1, λ2, α and logit norm with KerasTuner (and the objective, β and
the triplet's features and negatives, on request).

    python -m at2l_tf.tune --flagfile=flags/mnist_at2l.flags --max_train_examples=10000 \
        --epochs=2 --max_trials=12 --tune_dir=runs/tune_mnist      # random search (default)
    python -m at2l_tf.tune --flagfile=flags/mnist_tune.flags           # the shipped recipe
    python -m at2l_tf.tune ... --tune_dir=runs/tune_mnist --max_trials=20   # resume, 8 more
    python -m at2l_tf.train --flagfile=runs/tune_mnist/best.flags      # train the winner

Every flag of `python -m at2l_tf.train` is accepted and makes the *base*
configuration; each trial is the base with λ1 (`--lambda1`), λ2
(`--lambda2`), α (`--margin`) and the logit distance (`--norm`) drawn from
`--lambda1_range` (uniform), `--lambda2_range` and `--margin_range`
(log-uniform) and `--norms`. A trial trains for the base's `--epochs` on its
`--max_train_examples`, with the base `--seed` (same initial weights and
data order in every trial). Only the hyperparameters the `--defense` uses
are searched (`at`: λ1; `at2l`: all four; `tr`: λ2, α, norm; `trades`,
`mart`: β; with a base `--lambda2` > 0, `at`, `trades` and `mart` add the
triplet's). An empty range (`--lambda1_range=`) keeps the base value;
`min,min` fixes it.

**More axes, off by default** (so a search keeps the meaning it had):
`--defense_choices=at,at2l,trades,mart` draws each trial's objective (a trial
takes only the values its objective uses: an `at` trial stays plain AT),
`--beta_range=0.5,8` searches β of trades / mart (log-uniform),
`--triplet_features_choices=logits,embedding` and
`--triplet_negative_choices=random,hardest` the triplet term's design, and
`cosine` joins `--norms`. E.g. AT vs TRADES vs MART, with and without the
paper's triplet: `--defense_choices=at,at2l,trades,mart --beta_range=1,6`.

**Objective.** `val_robust_acc`, maximised: the accuracy under a stronger
attack than the training one — APGD-CE, 20 iterations, 1 restart, at the
training eps, on the first 1,000 validation images by default
(`--objective_attack`, `--objective_steps`, `--objective_restarts`,
`--objective_examples`) — measured after every epoch; a trial scores its
best epoch. Never the training attack's own accuracy (`val_adv_acc`), which
rewards gradient masking. The test split is not touched.

**Tuners.** `random` by default: with the dozen trials a CPU affords,
Bayesian optimisation would spend them all on its initial random points
(3 per hyperparameter: 12 for four). `bayesian` pays off from ~20 trials;
`hyperband` brackets the budget up to `--epochs` (factor 3), with
`--max_trials` as a cap.

**Output** in `--tune_dir` (KerasTuner's project directory; default
`runs/tune_<dataset>_<defense>`): one line per trial start and end on
stderr, Keras' per-epoch lines (`--verbose=2`, the default here), a table of
all trials on stdout at the end, and

* `search.json`: the settings of the search (checked on resume);
* `summary.json`: every trial (hyperparameters, objective, metrics at its
  best epoch, seconds) and the best one; rewritten after every trial;
* `best.flags`: the base flags with the best λ1, λ2, α, norm substituted,
  for `python -m at2l_tf.train --flagfile=<tune_dir>/best.flags`.

**Resume.** A second run with the same `--tune_dir` continues the search:
finished trials are kept (not retrained), a trial interrupted half-way is
run again, and `--max_trials` may be raised to extend it. The other
settings must be the same (compared with `search.json`); `--overwrite`
deletes the search and starts again. Bad input — an unknown tuner, a range
with min > max, a non-positive log range, an unknown norm, objective, features
or negative — exits with status 1 and one line, before anything is written.

**Distributed** (KerasTuner's own mode: one chief runs the oracle, workers run
the trials). Each process runs the same command, with the same flags and
`--tune_dir`, and three environment variables: `KERASTUNER_TUNER_ID` (an ID
containing `chief` makes the chief, every worker needs its own ID),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` (where the chief listens).
E.g. a chief and two workers on one machine:

    export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000
    KERASTUNER_TUNER_ID=chief   python -m at2l_tf.tune --flagfile=flags/mnist_tune.flags &
    KERASTUNER_TUNER_ID=worker0 python -m at2l_tf.tune --flagfile=flags/mnist_tune.flags &
    KERASTUNER_TUNER_ID=worker1 python -m at2l_tf.tune --flagfile=flags/mnist_tune.flags

The **chief** validates the flags and `--tune_dir` as above (resume,
`--overwrite`), writes `search.json`, and serves trials to the workers until
they are all done, logging each trial's start and end with the worker that
ran it; it alone writes `summary.json` (after every trial; `seconds` is the
time from handing a trial out to its result coming back) and `best.flags`, and
prints the table. It trains nothing itself. A chief whose search is already
finished writes its outputs and exits without waiting for workers. A
**worker** validates the same flags, waits for the chief (up to
`--wait_for_chief` seconds), refuses to start if the chief's `search.json`
records other settings, then runs trials until the chief has no more: it
logs one line per trial start and end and writes the trials' checkpoints
into `--tune_dir`, but no `summary.json`, `best.flags` or table. Workers read
and write the chief's `--tune_dir`: run them on the chief's machine or give
them the directory on a shared filesystem. A worker killed mid-trial and
restarted with the same ID runs its trial again; the chief waits for it
(KerasTuner's chief exits only when every trial it handed out has ended).
A half-set environment (an IP without a port or an ID, a port that is not a
number) is a one-line error.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import time

# `python -m at2l_tf.tune` imports the at2l_tf package first, so TensorFlow
# loads with its environment defaults (quiet C++ logs, oneDNN).
import keras_tuner
import tensorflow as tf
from absl import flags

from at2l_tf import cli, fileio
from at2l_tf import train  # Defines every train flag: they make the base config.
from at2l_tf.errors import ConfigError
from at2l_tf.training import distribute
from at2l_tf import hypermodel as hm

_S = hm.SearchSpace()
_O = hm.ObjectiveAttack()

TUNERS = ("random", "bayesian", "hyperband")
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"
BEST_FLAGS_FILE = "best.flags"
# Train flags that are not part of the recipe (display only).
_NOT_RECIPE = ("verbose", "triplet_distance")  # The alias would repeat --norm.
# Reported for every search; the other axes of `hm.ALL_HYPERPARAMETERS` when searched.
HYPERPARAMETERS = ("lambda1", "lambda2", "margin", "norm")
_SYMBOLS = {"lambda1": "λ1", "lambda2": "λ2", "margin": "α", "norm": "norm", "defense": "defense",
            "beta": "β", "triplet_features": "features", "triplet_negative": "negative"}


def _range_default(r):
    return [f"{v:g}" for v in r]


FLAGS = flags.FLAGS
flags.DEFINE_string("tuner", "random", "random | bayesian | hyperband (KerasTuner).")
flags.DEFINE_integer("max_trials", 10, "Trials in all (a resumed search counts the finished ones).")
flags.DEFINE_integer("executions_per_trial", 1, "Trainings per trial, seeds seed, seed+1, ...; the objective is their mean.")
flags.DEFINE_string("tune_dir", None, "KerasTuner project directory; default runs/tune_<dataset>_<defense>. Resumed if it exists.")
flags.DEFINE_bool("overwrite", False, "Delete the search in --tune_dir and start again.")
flags.DEFINE_list("lambda1_range", _range_default(_S.lambda1_range), "λ1 range 'min,max', uniform; empty keeps --lambda1.")
flags.DEFINE_list("lambda2_range", _range_default(_S.lambda2_range), "λ2 range 'min,max', log-uniform; empty keeps --lambda2.")
flags.DEFINE_list("margin_range", _range_default(_S.margin_range), "α range 'min,max', log-uniform; empty keeps --margin.")
flags.DEFINE_list("norms", list(_S.norms), "Triplet distances to choose from (linf, l2, l1, cosine); empty keeps --norm.")
flags.DEFINE_list("defense_choices", list(_S.defenses), "Objectives to choose from (at, at2l, tr, trades, mart); empty keeps --defense.")
flags.DEFINE_list("beta_range", [], "β range 'min,max' of trades / mart, log-uniform; empty keeps --beta.")
flags.DEFINE_list("triplet_features_choices", list(_S.triplet_features), "Triplet features to choose from (logits, embedding); empty keeps --triplet_features.")
flags.DEFINE_list("triplet_negative_choices", list(_S.triplet_negatives), "Triplet negatives to choose from (random, hardest); empty keeps --triplet_negative.")
flags.DEFINE_string("objective_attack", _O.name, f"Attack of val_robust_acc: {' | '.join(hm.OBJECTIVE_ATTACKS)}.")
flags.DEFINE_integer("objective_steps", _O.steps, "Iterations of the objective attack.")
flags.DEFINE_integer("objective_restarts", _O.restarts, "Random restarts of the objective attack.")
flags.DEFINE_integer("objective_examples", _O.num_examples, "First N validation images of the objective.")
flags.DEFINE_integer("wait_for_chief", 600, "Distributed workers: seconds to wait for the chief's oracle to answer.")


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
        for name in ("max_trials", "executions_per_trial"):
            value = getattr(self, name)
            if value is None or value < 1:
                raise ConfigError(f"{name} must be >= 1, received {name}={value}")
        if not self.tune_dir:
            raise ConfigError("tune_dir must not be empty")
        return self


# ------------------------------------------------------------------ distributed roles

TUNER_ID_VAR = "KERASTUNER_TUNER_ID"
ORACLE_IP_VAR = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_VAR = "KERASTUNER_ORACLE_PORT"
_ROLE_VARS = (TUNER_ID_VAR, ORACLE_IP_VAR, ORACLE_PORT_VAR)
# The tuner state file of the chief and of a search on one machine. KerasTuner
# names it after the tuner ID and reloads the oracle only when it finds it
# (keras-team/keras-tuner#976): without one shared name, a chief would restart a
# search made on one machine (or by a chief of another ID) from trial 0, over
# the old trials.
_TUNER_STATE_FILE = "tuner0.json"


@dataclasses.dataclass(frozen=True)
class TunerRole:
    """This process's part in a distributed search (KerasTuner's environment variables).

    Attributes:
        tuner_id: `KERASTUNER_TUNER_ID`; KerasTuner makes the tuner whose ID
            contains "chief" the chief.
        ip: `KERASTUNER_ORACLE_IP`, where the chief's oracle listens.
        port: `KERASTUNER_ORACLE_PORT`.
    """

    tuner_id: str
    ip: str
    port: int

    @property
    def chief(self):
        return "chief" in self.tuner_id

    @property
    def address(self):
        return f"{self.ip}:{self.port}"

    def describe(self):
        return f"{'chief' if self.chief else 'worker'} {self.tuner_id!r} (oracle at {self.address})"


def tuner_role(environ=None):
    """The `TunerRole` the environment sets, or None for a search on one machine.

    KerasTuner runs distributed when `KERASTUNER_ORACLE_IP` is set, and then
    needs the other two; it would fail later, with a traceback, or (an ID
    alone) run a search of its own under that ID. All three or none.

    Raises:
        ConfigError: a half-set environment, an empty value, or a port that is
            not an integer in 1-65535.
    """
    environ = os.environ if environ is None else environ
    present = [v for v in _ROLE_VARS if v in environ]
    if not present:
        return None
    missing = [v for v in _ROLE_VARS if v not in environ]
    if missing:
        raise ConfigError(
            f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} set but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a distributed search "
            f"needs all of {', '.join(_ROLE_VARS)} (or none of them, to search on one machine)"
        )
    empty = [v for v in _ROLE_VARS if not environ[v].strip()]
    if empty:
        raise ConfigError(f"{empty[0]} is empty: a distributed search needs a value for each of {', '.join(_ROLE_VARS)}")
    # KerasTuner uses the values as they are ("<ip>:<port>"): digits only, no spaces.
    text = environ[ORACLE_PORT_VAR]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ConfigError(f"{ORACLE_PORT_VAR} must be an integer in 1-65535, received {ORACLE_PORT_VAR}={text!r}")
    return TunerRole(tuner_id=environ[TUNER_ID_VAR], ip=environ[ORACLE_IP_VAR], port=int(text))


def check_chief_port(role):
    """Fails early, with one line, if the chief cannot listen on its address
    (gRPC would raise "Failed to bind" from inside KerasTuner)."""
    try:
        infos = socket.getaddrinfo(role.ip, role.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"the chief cannot resolve {ORACLE_IP_VAR}={role.ip} ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # Not blocked by the closing connections of an earlier chief, only by a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise ConfigError(
                f"the chief cannot listen on {role.address} ({e.strerror or e}): is another chief running "
                f"there, or is {ORACLE_IP_VAR} not an address of this machine?"
            ) from None


def wait_for_chief(role, timeout):
    """Blocks until the chief's oracle answers at `role.address`.

    The chief writes `search.json` before it starts serving, so a worker that
    got through here reads the chief's settings, not those of an earlier search.

    Raises:
        ConfigError: no answer within `timeout` seconds.
    """
    # KerasTuner's own dependency for its distributed mode, imported when used, as
    # KerasTuner does (it pulls in protobuf).
    import grpc

    channel = grpc.insecure_channel(role.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConfigError(
            f"no chief answered at {role.address} within {timeout:g} s (--wait_for_chief): start the chief "
            f"(KERASTUNER_TUNER_ID=chief), or see its summary.json if it has already finished the search"
        ) from None
    finally:
        channel.close()


# ------------------------------------------------------------------ flags -> settings


def settings_from_flags(f=FLAGS):
    """Maps parsed flags onto `(base_config, space, objective_attack, settings)` (not validated)."""
    base = train.config_from_flags(f)
    space = hm.SearchSpace(
        lambda1_range=_parse_range("lambda1_range", f.lambda1_range),
        lambda2_range=_parse_range("lambda2_range", f.lambda2_range),
        margin_range=_parse_range("margin_range", f.margin_range),
        norms=_choices(f.norms),
        defenses=_choices(f.defense_choices),
        beta_range=_parse_range("beta_range", f.beta_range),
        triplet_features=_choices(f.triplet_features_choices),
        triplet_negatives=_choices(f.triplet_negative_choices),
    )
    objective_attack = hm.ObjectiveAttack(
        name=f.objective_attack,
        steps=f.objective_steps,
        restarts=f.objective_restarts,
        num_examples=f.objective_examples,
    )
    settings = SearchSettings(
        tuner=f.tuner,
        max_trials=f.max_trials,
        executions_per_trial=f.executions_per_trial,
        tune_dir=f.tune_dir or default_tune_dir(base),
        overwrite=f.overwrite,
    )
    return base, space, objective_attack, settings


def default_tune_dir(config):
    """`runs/tune_<dataset>[_<preprocessing>]_<defense>`, beside train's default workdir."""
    parts = [config.data.dataset, config.train.defense]
    if config.preprocessing.name != "none":
        parts.insert(1, config.preprocessing.name)
    return os.path.join("runs", "tune_" + "_".join(parts))


def _choices(values):
    return tuple(dict.fromkeys(v.strip() for v in values if v.strip()))


def _parse_range(name, values):
    values = [v.strip() for v in values]
    if not any(values):
        return None
    received = f"received {name}={','.join(values)}"
    if len(values) != 2:
        raise ConfigError(f"{name} must be 'min,max' (or empty to keep the base value), {received}")
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(f"{name} must be two numbers 'min,max', {received}") from None


def base_flag_lines(f=FLAGS):
    """`[(name, "--name=value")]` for every train flag that has a value, in definition order."""
    lines = []
    for flag in f.get_flags_for_module(train):
        if flag.name in _NOT_RECIPE:
            continue
        text = flag.serialize()
        if text:  # None-valued flags (the dataset's defaults) are left out.
            lines.append((flag.name, text))
    return lines


# ------------------------------------------------------------------ validation


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
        "tuned": list(space.tuned(base.train.defense, base.train.lambda2)),
        "objective": {
            "metric": hm.OBJECTIVE_METRIC,
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
    space.validate(base.train.defense, base.train.lambda2)
    check_trial_configs(base, space)
    objective_attack.validate(base)


def check_trial_configs(base, space):
    """Validates the base config under each objective, features and negative choice of
    `space` (e.g. `embedding` on a model without a penultimate layer), before any trial."""
    hypermodel = hm.AT2LHyperModel(base, space, hm.ObjectiveAttack())
    for defense in space.defenses or (base.train.defense,):
        for features in space.triplet_features or (None,):
            for negative in space.triplet_negatives or (None,):
                values = {"defense": defense, "triplet_features": features, "triplet_negative": negative}
                cfg = hypermodel.config_for({k: v for k, v in values.items() if v is not None})
                try:
                    cfg.validate()
                except ConfigError as e:
                    raise ConfigError(f"a trial with defense={defense!r} is invalid: {e}") from None


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
    try:
        with open(marker) as fh:
            previous = json.load(fh)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {marker} ({e}); pass --overwrite to start again") from None
    diff = _differences(previous, record)
    if diff:
        raise ConfigError(
            f"tune_dir {path} holds a search with other settings ({diff}); "
            "use the same flags to resume it, --overwrite to restart it, or another --tune_dir"
        )
    return "resume"


def check_worker_dir(path, record, role):
    """Checks that `path` holds the chief's search with `record`'s settings
    (`max_trials` aside: the chief's counts); reads, never writes."""
    marker = os.path.join(path, SEARCH_FILE)
    try:
        with open(marker) as fh:
            previous = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"the chief at {role.address} answered but {marker} does not exist: a worker needs the chief's "
            "--tune_dir (on the chief's machine or a shared filesystem)"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the chief's {marker} ({e})") from None
    diff = _differences(previous, record)
    if diff:
        raise ConfigError(
            f"this worker's flags differ from the chief's search in {path} ({diff}): start every worker "
            "with the chief's flags"
        )


def _differences(previous, record):
    """The settings (`max_trials` aside) that differ, as text; empty if none."""
    old, new = _flatten(previous), _flatten(record)
    diff = sorted(k for k in old.keys() | new.keys() if k != "max_trials" and old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    return shown + more


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------ the search


def run_search(base, space, objective_attack, settings, *, base_flags=(), verbose=2, wait_for_chief_s=600):
    """Validates, then runs (or resumes) the search and writes its outputs.

    On one machine, or as the chief or a worker of a distributed search when
    KerasTuner's environment variables are set (`tuner_role`; see the module
    docstring): the chief serves the trials and writes the outputs, a worker
    runs trials and writes none.

    Args:
        base: the base `ExperimentConfig`.
        space: a `hypermodel.SearchSpace`.
        objective_attack: a `hypermodel.ObjectiveAttack`.
        settings: a `SearchSettings`.
        base_flags: `[(name, "--name=value")]`, the train flags of `base`,
            from which `best.flags` is written (`base_flag_lines()`); empty
            skips `best.flags`.
        verbose: Keras verbosity of each trial's `fit`.
        wait_for_chief_s: a worker's wait for the chief's oracle, in seconds.

    Returns:
        `(tuner, summary)`: the KerasTuner tuner (e.g. `tuner.get_best_models()`)
        and the dict written to `summary.json` (None on a worker).
    """
    role = tuner_role()
    worker = role is not None and not role.chief
    record = search_record(base, space, objective_attack, settings)
    if worker:
        validate_flags(base, space, objective_attack, settings)
        if settings.overwrite:
            raise ConfigError("--overwrite is the chief's: a worker runs the chief's search as it is")
        if wait_for_chief_s is None or wait_for_chief_s < 0:
            raise ConfigError(f"wait_for_chief must be >= 0 seconds, received wait_for_chief={wait_for_chief_s}")
        _log(f"{role.describe()}: waiting for the chief (up to {wait_for_chief_s:g} s)")
        wait_for_chief(role, wait_for_chief_s)
        check_worker_dir(settings.tune_dir, record, role)
        mode = "worker"
    else:
        mode = validate(base, space, objective_attack, settings)
        if role is not None:
            check_chief_port(role)
    strategy = distribute.make_strategy(base.train.strategy)
    hypermodel = hm.AT2LHyperModel(base, space, objective_attack, verbose=verbose)
    _log(hypermodel.precision.describe())
    if hypermodel.precision.warning:
        _log(f"warning: {hypermodel.precision.warning}")
    reporter = _Reporter(settings, base, objective_attack, record, dict(base_flags), hypermodel)
    reporter.writes = not worker
    tune_dir = os.path.abspath(settings.tune_dir)
    common = dict(
        hypermodel=hypermodel,
        objective=hm.objective(),
        seed=tuner_seed(base.train.seed),
        executions_per_trial=settings.executions_per_trial,
        directory=os.path.dirname(tune_dir),
        project_name=os.path.basename(tune_dir),
        overwrite=False,
        distribution_strategy=None if strategy is tf.distribute.get_strategy() else strategy,
    )
    if mode == "overwrite":  # check_tune_dir made sure it holds a search of ours.
        shutil.rmtree(settings.tune_dir)
    if not worker:
        # Written first, so that the directory is recognised as a search from the start
        # (and, on a chief, before the workers can reach it: they compare their flags with it).
        fileio.atomic_write_json(os.path.join(settings.tune_dir, SEARCH_FILE), record)
    cls = _tuner_class(settings.tuner)
    # KerasTuner prints "Reloading Tuner from ..." on stdout: keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        if settings.tuner == "hyperband":
            tuner = cls(max_epochs=base.train.epochs, factor=3, **common)
        else:
            tuner = cls(max_trials=settings.max_trials, **common)
    tuner.at2l_reporter = reporter
    tuned = ", ".join(_SYMBOLS[n] for n in hypermodel.tuned)
    if worker:
        # The oracle is the chief's (a proxy without `trials`); so are max_trials and the outputs.
        _log(
            f"{role.describe()}: running trials of the chief's {settings.tuner} search of {tuned} in "
            f"{settings.tune_dir}; the chief writes summary.json and best.flags"
        )
    else:
        # The constructor's value, not the saved state's, counts: a resumed search may be
        # extended; Hyperband has no cap of its own (its budget comes from max_epochs).
        tuner.oracle.max_trials = settings.max_trials
        reporter.load_durations()
        done = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
        uses = {n for d in space.defenses or (base.train.defense,) for n in hm.used_by(d, base.train.lambda2)}
        who = f"{role.describe()}: " if role else ""
        _log(
            f"{who}{'resuming' if mode == 'resume' else 'starting'} a {settings.tuner} search of {tuned} in "
            f"{settings.tune_dir}: {done} of {settings.max_trials} trials done; objective "
            f"{hm.OBJECTIVE_METRIC} under {objective_attack.describe(base.eps)} on the first "
            f"{objective_attack.num_examples} validation images"
        )
        untuned = [n for n in hm.ALL_HYPERPARAMETERS if n in uses and n not in hypermodel.tuned and n != "defense"]
        unused = [n for n in HYPERPARAMETERS if n not in uses]
        if untuned:
            _log(f"kept from the base flags: {', '.join(f'{_SYMBOLS[n]}={getattr(base.train, n)}' for n in untuned)}")
        if unused:
            which = ", ".join(space.defenses) if space.defenses else base.train.defense
            _log(f"defense={which} does not use {', '.join(_SYMBOLS[n] for n in unused)}: not tuned")
    retracing = _RetracingFilter()
    tf.get_logger().addFilter(retracing)
    try:
        if role is not None and role.chief:
            _serve(tuner, reporter, role)
        else:
            tuner.search(verbose=0)
    finally:
        tf.get_logger().removeFilter(retracing)
    if worker:
        ran = ", ".join(reporter.ran) or "none"
        _log(f"{role.describe()}: the chief has no more trials; this worker ran trials: {ran}")
        return tuner, None
    summary = reporter.write(tuner)
    return tuner, summary


def _serve(tuner, reporter, role):
    """The chief's search: KerasTuner's oracle server, until every trial has ended.

    The chief runs no trial: it sees them through its oracle, whose
    `create_trial` and `end_trial` the workers call (over gRPC, one call at a
    time); the two are wrapped to log each trial's start and end and to
    rewrite `summary.json` after each.
    """
    oracle = tuner.oracle
    if _finished(oracle):
        # KerasTuner's chief would serve until a worker asked for a trial (forever without one).
        _log(f"{role.describe()}: the search is finished; no trial to serve")
        return
    create_trial, end_trial = oracle.create_trial, oracle.end_trial

    def watched_create_trial(tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == "RUNNING":
            _report(reporter.begin, trial, on=tuner_id)
        return trial

    def watched_end_trial(trial):
        on = next((t for t, ongoing in oracle.ongoing_trials.items() if ongoing.trial_id == trial.trial_id), None)
        end_trial(trial)
        # KerasTuner's end_trial saves the oracle before it drops the trial from the
        # ongoing ones, and a chief never saves again: a resumed search would run its
        # last trial a second time. (A tuner that runs trials saves after each.)
        oracle.save()
        _report(reporter.end, tuner, trial, on=on)

    oracle.create_trial, oracle.end_trial = watched_create_trial, watched_end_trial
    _log(f"{role.describe()}: serving trials; start the workers (each its own {TUNER_ID_VAR})")
    # KerasTuner prints retries on stdout, from the server's threads: keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        tuner.search(verbose=0)  # Returns when every trial handed out has ended.


def _report(fn, *args, **kwargs):
    # Runs in the gRPC server's thread, after the oracle has recorded the call: a
    # failure to log or to write summary.json must not fail the worker's call.
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        _log(f"warning: could not report a trial ({type(e).__name__}: {e}); the oracle has it")


def _finished(oracle):
    """Whether the chief's oracle has every trial of `max_trials` and none to run or retry."""
    remaining = oracle.remaining_trials()
    ended = ("COMPLETED", "FAILED")
    return remaining is not None and remaining <= 0 and all(t.status in ended for t in oracle.trials.values())


class _RetracingFilter(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warnings.

    Every trial builds a new model, so Keras' train and test steps and the
    attacks are traced once per trial by design; TensorFlow counts those
    traces across trials and warns (twice, through two loggers) from the
    third trial on.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def tuner_seed(seed):
    """The seed of the tuner's own sampling: `seed + 1`, because KerasTuner takes a
    seed of 0 for "no seed" (and draws one at random, so the search would not repeat)."""
    return seed + 1


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
            # One name for the chief and a search on one machine (see _TUNER_STATE_FILE);
            # a worker keeps KerasTuner's own, after its ID (it holds no oracle state).
            if self._is_worker():
                return super()._get_tuner_fname()
            return os.path.join(str(self.project_dir), _TUNER_STATE_FILE)

    Tuner.__name__ = Tuner.__qualname__ = f"Logged{base.__name__}"
    return Tuner


class _Reporter:
    """Progress lines, `summary.json` and `best.flags` of one search."""

    def __init__(self, settings, base, objective_attack, record, base_flags, hypermodel):
        self.settings, self.base, self.objective_attack = settings, base, objective_attack
        self.record, self.base_flags, self.hypermodel = record, base_flags, hypermodel
        self.started, self.seconds = {}, {}
        self.ran = []  # Trials this process ran (a worker's log).
        self.writes = True  # summary.json and best.flags (False on a worker).
        # λ1, λ2, α, norm always; the objective, β, features, negative when searched.
        self.names = reported_names(record["tuned"])

    def load_durations(self):
        # Seconds of the trials of earlier invocations, kept across resumes.
        try:
            with open(os.path.join(self.settings.tune_dir, SUMMARY_FILE)) as fh:
                old = json.load(fh)
            self.seconds.update({t["trial_id"]: t.get("seconds") for t in old.get("trials", [])})
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def begin(self, trial, on=None):
        """Logs a trial's start (`on`: the worker it was handed to, on a chief)."""
        self.started[trial.trial_id] = time.time()
        hp_values = trial.hyperparameters.values
        values = self.effective(hp_values)
        budget = ""
        if hp_values.get("tuner/epochs"):  # Hyperband
            first = hp_values.get("tuner/initial_epoch", 0) + 1
            budget = f" (epochs {first}-{hp_values['tuner/epochs']}"
            budget += f", from trial {hp_values['tuner/trial_id']})" if "tuner/trial_id" in hp_values else ")"
        where = f" on {on}" if on else ""
        _log(f"trial {trial.trial_id} start{budget}{where}: {_format_values(values, self.used(values))}")

    def end(self, tuner, trial, on=None):
        """Logs a trial's end and (unless on a worker) rewrites the outputs."""
        trial = tuner.oracle.get_trial(trial.trial_id)
        if trial.trial_id in self.started:
            self.seconds[trial.trial_id] = round(time.time() - self.started.pop(trial.trial_id), 1)
        self.ran.append(trial.trial_id)
        secs = self.seconds.get(trial.trial_id)
        took = f" in {secs:.0f} s" if secs is not None else ""
        took += f" on {on}" if on else ""
        if trial.status == "COMPLETED" and trial.score is not None:
            adv = _metric(trial, "val_adv_acc")
            extra = f", val_adv_acc={adv:.4f} (training attack)" if adv is not None else ""
            _log(
                f"trial {trial.trial_id} end{took}: {hm.OBJECTIVE_METRIC}={trial.score:.4f} "
                f"at epoch {_best_epoch(trial)}{extra}"
            )
        else:
            _log(f"trial {trial.trial_id} {str(trial.status).lower()}{took}: {_last_line(trial.message)}")
        if self.writes:
            self.write(tuner)

    def effective(self, values):
        """λ1, λ2, α, norm (and the searched axes) a trial trains with: its tuned
        values where its objective uses them, else the base config's."""
        train = self.hypermodel.config_for(values).train
        return {n: getattr(train, n) for n in self.names}

    def used(self, values):
        """The reported names the trial's objective uses (the objective first)."""
        return used_names(values, self.base.train.defense, self.base.train.lambda2)

    def summarize(self, tuner):
        oracle = tuner.oracle
        order = [t for t in oracle.start_order if t in oracle.trials]
        order += sorted(t for t in oracle.trials if t not in order)
        trials = []
        for tid in order:
            trial = oracle.trials[tid]
            hp_values = trial.hyperparameters.values
            entry = {
                "trial_id": tid,
                "status": str(trial.status),
                "hyperparameters": self.effective(hp_values),
                "tuned": {n: hp_values[n] for n in hm.ALL_HYPERPARAMETERS if n in hp_values},
                hm.OBJECTIVE_METRIC: trial.score,
                "best_epoch": _best_epoch(trial) if trial.score is not None else None,
                "metrics": {
                    name: trial.metrics.get_last_value(name) for name in sorted(trial.metrics.metrics)
                },
                "seconds": self.seconds.get(tid),
            }
            if "tuner/epochs" in hp_values:
                entry["epochs"] = hp_values["tuner/epochs"]
            if trial.status != "COMPLETED" and trial.message:
                entry["message"] = _last_line(trial.message)
            trials.append(entry)
        scored = [t for t in trials if t["status"] == "COMPLETED" and t[hm.OBJECTIVE_METRIC] is not None]
        best = max(scored, key=lambda t: t[hm.OBJECTIVE_METRIC], default=None)
        summary = {
            "tune_dir": self.settings.tune_dir,
            "tuner": self.settings.tuner,
            "max_trials": self.settings.max_trials,
            "executions_per_trial": self.settings.executions_per_trial,
            "seed": self.base.train.seed,
            "tuner_seed": tuner_seed(self.base.train.seed),
            "objective": self.record["objective"],
            "search_space": self.record["search_space"],
            "tuned": self.record["tuned"],
            "base_config": self.base.to_dict(),
            "trials": trials,
            "best": None,
        }
        if best is not None:
            summary["best"] = {
                "trial_id": best["trial_id"],
                hm.OBJECTIVE_METRIC: best[hm.OBJECTIVE_METRIC],
                "best_epoch": best["best_epoch"],
                "hyperparameters": best["hyperparameters"],
                "flagfile": os.path.join(self.settings.tune_dir, BEST_FLAGS_FILE) if self.base_flags else None,
            }
        return summary

    def write(self, tuner):
        """Writes `summary.json` and (with a finished trial and base flags) `best.flags`."""
        summary = self.summarize(tuner)
        if summary["best"] is not None and self.base_flags:
            fileio.atomic_write_text(summary["best"]["flagfile"], self.best_flags_text(summary))
        fileio.atomic_write_json(os.path.join(self.settings.tune_dir, SUMMARY_FILE), summary)
        return summary

    def best_flags_text(self, summary):
        best, o = summary["best"], self.objective_attack
        path = os.path.join(self.settings.tune_dir, BEST_FLAGS_FILE)
        n_done = sum(1 for t in summary["trials"] if t["status"] == "COMPLETED")
        header = [
            f"# python -m at2l_tf.train --flagfile={path}",
            f"# Best of {n_done} finished trials of a {self.settings.tuner} search "
            f"(python -m at2l_tf.tune --tune_dir={self.settings.tune_dir}): trial {best['trial_id']},",
            f"# {hm.OBJECTIVE_METRIC} = {best[hm.OBJECTIVE_METRIC]:.4f} at epoch {best['best_epoch']} under "
            f"{o.describe(self.base.eps)} on the first {o.num_examples} validation images",
            f"# (seed {self.base.train.seed}; not measured on the test split yet).",
            f"# {_format_values(best['hyperparameters'], self.used(best['hyperparameters']))}; "
            "the other flags are the search's base flags.",
        ]
        values = best["hyperparameters"]
        lines = []
        for name, text in self.base_flags.items():
            if name in values:
                text = _flag_line(name, values[name], text)
            if text:
                lines.append(text)
        for name in self.names:  # In case the base flags did not carry one.
            if name not in self.base_flags and values[name] is not None:
                lines.append(_flag_line(name, values[name]))
        return "\n".join(header + lines) + "\n"


def reported_names(tuned):
    """The hyperparameters a search reports: λ1, λ2, α, norm, and the other searched axes."""
    return tuple(n for n in hm.ALL_HYPERPARAMETERS if n in HYPERPARAMETERS or n in tuned)


def used_names(values, base_defense, base_lambda2):
    """The names of `values` that the trial's objective (`values["defense"]`, else the base's) uses."""
    used = ("defense",) + hm.used_by(values.get("defense", base_defense), base_lambda2)
    return tuple(n for n in values if n in used)


def format_table(summary):
    """The trials as a fixed-width table, the best one marked with `*`."""
    best = (summary.get("best") or {}).get("trial_id")
    train = summary["base_config"]["train"]
    names = reported_names(summary["tuned"])
    header = ["", "trial", "status", *(_SYMBOLS[n] for n in names), hm.OBJECTIVE_METRIC, "val_adv_acc",
              "val_acc", "epoch", "seconds"]
    rows = []
    for t in summary["trials"]:
        hp, m = t["hyperparameters"], t["metrics"]
        used = hm.used_by(hp.get("defense", train["defense"]), train.get("lambda2"))  # "-": unused.
        rows.append([
            "*" if t["trial_id"] == best else "",
            t["trial_id"],
            t["status"],
            *(_cell(hp[n], n in used or n == "defense") for n in names),
            _pct(t[hm.OBJECTIVE_METRIC]),
            _pct(m.get("val_adv_acc")),
            _pct(m.get("val_acc")),
            "-" if t["best_epoch"] is None else str(t["best_epoch"]),
            "-" if t["seconds"] is None else f"{t['seconds']:.0f}",
        ])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    left = 3 + len(names)  # Marker, trial, status and the hyperparameters; numbers to the right.
    lines = [" ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header] + rows]
    o = summary["objective"]
    lines.append(
        f"({hm.OBJECTIVE_METRIC}: accuracy under {o['name']}, {o['steps']} steps, {o['restarts']} "
        f"restart(s), eps {o['eps']:.4g}, first {o['num_examples']} validation images, best epoch "
        f"of each trial; val_adv_acc: the training attack, whole validation split)"
    )
    return "\n".join(lines)


def _best_epoch(trial):
    # KerasTuner counts the best step from the fit's first epoch; a Hyperband
    # trial that continues another starts at `tuner/initial_epoch`.
    return trial.hyperparameters.values.get("tuner/initial_epoch", 0) + trial.best_step + 1


def _metric(trial, name):
    try:
        return trial.metrics.get_last_value(name)
    except (KeyError, ValueError):
        return None


def _pct(v):
    return "-" if v is None else f"{v:.2%}"


def _format_values(values, names=HYPERPARAMETERS):
    return " ".join(f"{_SYMBOLS[n]}={_cell(values[n])}" for n in names)


def _flag_line(name, value, default=""):
    """`--name=value` (floats by repr, to round-trip); `default` when value is None."""
    if value is None:
        return default
    return f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}"


def _cell(value, used=True):
    if not used or value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_line(message):
    lines = [line.strip() for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _log(msg):
    print(f"[at2l_tf] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ entry point


def tune_from_flags(f=FLAGS):
    """Runs the search the parsed flags describe; returns `(tuner, summary)` (summary None on a worker)."""
    base, space, objective_attack, settings = settings_from_flags(f)
    return run_search(
        base, space, objective_attack, settings, base_flags=base_flag_lines(f), verbose=f.verbose,
        wait_for_chief_s=f.wait_for_chief,
    )


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    _, summary = tune_from_flags()
    if summary is None:  # A worker of a distributed search: the chief reports.
        return
    print(format_table(summary))
    if summary["best"] is not None and summary["best"]["flagfile"]:
        _log(f"best: trial {summary['best']['trial_id']}; wrote {summary['best']['flagfile']}")
    else:
        _log("no trial finished: no best.flags")


if __name__ == "__main__":
    FLAGS.set_default("verbose", 2)  # One line per epoch: trials are long.
    cli.run(main, "tune")
