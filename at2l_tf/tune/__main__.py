r"""Search AT²L's λ1, λ2, α and triplet distance with KerasTuner (and the objective, β and
the triplet's features and negatives, on request).

    python -m at2l_tf.tune --flagfile=flags/mnist_at2l.flags --max_train_examples=10000 \
        --epochs=2 --max_trials=12 --tune_dir=runs/tune_mnist      # random search (default)
    python -m at2l_tf.tune --flagfile=flags/mnist_tune.flags           # the shipped recipe
    python -m at2l_tf.tune ... --tune_dir=runs/tune_mnist --max_trials=20   # resume, 8 more
    python -m at2l_tf.train --flagfile=runs/tune_mnist/best.flags      # train the winner

Every flag of `python -m at2l_tf.train` is accepted and makes the *base*
configuration; each trial is the base with λ1 (`--lambda1`), λ2
(`--lambda2`), α (`--margin`) and the triplet distance (`--triplet_distance`)
drawn from `--lambda1_range` (uniform), `--lambda2_range` and `--margin_range`
(log-uniform) and `--triplet_distance_choices`. A trial trains for the base's `--epochs` on its
`--max_train_examples`, with the base `--seed` (same initial weights and
data order in every trial). Only the hyperparameters the `--objective` uses
are searched (`at`: λ1; `at2l`: all four; `tr`: λ2, α, distance; `trades`,
`mart`: β; with a base `--lambda2` > 0, `at`, `trades` and `mart` add the
triplet's). An empty range (`--lambda1_range=`) keeps the base value;
`min,min` fixes it.

**More axes, off by default** (so a search keeps the meaning it had):
`--objective_choices=at,at2l,trades,mart` draws each trial's objective (a trial
takes only the values its objective uses: an `at` trial stays plain AT),
`--beta_range=0.5,8` searches β of trades / mart (log-uniform),
`--triplet_features_choices=logits,embedding` and
`--triplet_negative_choices=random,hardest` the triplet term's design, and
`cosine` joins `--triplet_distance_choices`. E.g. AT vs TRADES vs MART, with and
without the paper's triplet: `--objective_choices=at,at2l,trades,mart --beta_range=1,6`.
`--defense_choices` is a deprecated alias of `--objective_choices` (one warning
line), as train's `--defense` is of `--objective`; `--norms`, once an alias of
`--triplet_distance_choices`, is gone (a one-line error names its replacement),
as is train's `--norm`.

**What a search maximises** (the tuning objective, not the training
`--objective`): `val_robust_acc`, the accuracy under a stronger attack than
the training one — APGD-CE, 20 iterations, 1 restart, at the
training eps, on the first 1,000 validation images by default
(`--objective_attack`, `--objective_steps`, `--objective_restarts`,
`--objective_examples`) — measured after every epoch, on a float32 copy of the
classifier whatever precision trains it; a trial scores its best epoch. Never
the training attack's own accuracy (`val_adv_acc`), which rewards gradient
masking. The test split is not touched.

**Tuners.** `random` by default: with the dozen trials a CPU affords,
Bayesian optimisation would spend them all on its initial random points
(3 per hyperparameter: 12 for four). `bayesian` pays off from ~20 trials;
`hyperband` brackets the budget up to `--epochs` (factor 3), with
`--max_trials` as a cap.

**Output** in `--tune_dir` (KerasTuner's project directory; default
`runs/tune_<dataset>_<objective>`): one line per trial start and end on
stderr, Keras' per-epoch lines (`--verbose=2`, the default here), a table of
all trials on stdout at the end, and

* `search.json`: the settings of the search (checked on resume);
* `summary.json`: every trial (hyperparameters, objective, metrics at its
  best epoch, seconds) and the best one; rewritten after every trial;
* `best.flags`: the base flags with the best λ1, λ2, α, distance substituted,
  for `python -m at2l_tf.train --flagfile=<tune_dir>/best.flags`.

**Resume.** A second run with the same `--tune_dir` continues the search:
finished trials are kept (not retrained), a trial interrupted half-way is
run again, and `--max_trials` may be raised to extend it. The other
settings must be the same (compared with `search.json`); `--overwrite`
deletes the search and starts again. Bad input — an unknown tuner, a range
with min > max, a non-positive log range, an unknown distance, objective, features
or negative — exits with status 1 and one line, before anything is written.

**Distributed** (KerasTuner's own mode: one chief runs the oracle, workers run
the trials, each process the same command with `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set): see docs/usage.md,
"Distributed search"; `--wait_for_chief` bounds a worker's wait.
"""

# The entry point: the tune flags are defined here and only here; the library
# (`at2l_tf.tune.*`) never reads flags. `python -m at2l_tf.tune` imports the
# at2l_tf package first, so TensorFlow loads with its environment defaults
# (quiet C++ logs, oneDNN).
from absl import flags

from at2l_tf import cli
from at2l_tf import train  # Defines every train flag: they make the base config.
from at2l_tf.errors import ConfigError
from at2l_tf.log import log
from at2l_tf.tune import report, search
from at2l_tf.tune import space as space_lib
from at2l_tf.tune.settings import SearchSettings, default_tune_dir

_S = space_lib.SearchSpace()
_O = space_lib.ObjectiveAttack()
# Train flags that are not part of the recipe (display only).
_NOT_RECIPE = ("verbose", *train.DEPRECATED)  # best.flags carries their replacements.
# Removed flags -> their replacements (`cli.run`): train's, and the search's own.
REMOVED = {**train.REMOVED, "norms": "triplet_distance_choices"}


def _range_default(r):
    return [f"{v:g}" for v in r]


FLAGS = flags.FLAGS
flags.DEFINE_string("tuner", "random", "random | bayesian | hyperband (KerasTuner).")
flags.DEFINE_integer("max_trials", 10, "Trials in all (a resumed search counts the finished ones).")
flags.DEFINE_integer("executions_per_trial", 1, "Trainings per trial, seeds seed, seed+1, ...; the objective is their mean.")
flags.DEFINE_string("tune_dir", None, "KerasTuner project directory; default runs/tune_<dataset>_<objective>. Resumed if it exists.")
flags.DEFINE_bool("overwrite", False, "Delete the search in --tune_dir and start again.")
flags.DEFINE_list("lambda1_range", _range_default(_S.lambda1_range), "λ1 range 'min,max', uniform; empty keeps --lambda1.")
flags.DEFINE_list("lambda2_range", _range_default(_S.lambda2_range), "λ2 range 'min,max', log-uniform; empty keeps --lambda2.")
flags.DEFINE_list("margin_range", _range_default(_S.margin_range), "α range 'min,max', log-uniform; empty keeps --margin.")
flags.DEFINE_list("triplet_distance_choices", list(_S.triplet_distances), "Triplet distances to choose from (linf, l2, l1, cosine); empty keeps --triplet_distance.")
flags.DEFINE_list("objective_choices", list(_S.objectives), "Objectives to choose from (at, at2l, tr, trades, mart); empty keeps --objective.")
flags.DEFINE_list("defense_choices", None, "Deprecated alias of --objective_choices.")
flags.DEFINE_list("beta_range", [], "β range 'min,max' of trades / mart, log-uniform; empty keeps --beta.")
flags.DEFINE_list("triplet_features_choices", list(_S.triplet_features), "Triplet features to choose from (logits, embedding); empty keeps --triplet_features.")
flags.DEFINE_list("triplet_negative_choices", list(_S.triplet_negatives), "Triplet negatives to choose from (random, hardest); empty keeps --triplet_negative.")
flags.DEFINE_string("objective_attack", _O.name, f"Attack of val_robust_acc: {' | '.join(space_lib.OBJECTIVE_ATTACKS)}.")
flags.DEFINE_integer("objective_steps", _O.steps, "Iterations of the objective attack.")
flags.DEFINE_integer("objective_restarts", _O.restarts, "Random restarts of the objective attack.")
flags.DEFINE_integer("objective_examples", _O.num_examples, "First N validation images of the objective.")
flags.DEFINE_integer("wait_for_chief", 600, "Distributed workers: seconds to wait for the chief's oracle to answer.")


def settings_from_flags(f=FLAGS):
    """Maps parsed flags onto `(base_config, space, objective_attack, settings)` (not validated)."""
    base = train.config_from_flags(f)
    space = space_lib.SearchSpace(
        lambda1_range=_parse_range("lambda1_range", f.lambda1_range),
        lambda2_range=_parse_range("lambda2_range", f.lambda2_range),
        margin_range=_parse_range("margin_range", f.margin_range),
        triplet_distances=_choices(f.triplet_distance_choices),
        objectives=_choices(train.deprecated_alias(f, "defense_choices", "objective_choices")),
        beta_range=_parse_range("beta_range", f.beta_range),
        triplet_features=_choices(f.triplet_features_choices),
        triplet_negatives=_choices(f.triplet_negative_choices),
    )
    objective_attack = space_lib.ObjectiveAttack(
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
    """`[(name, "--name=value")]` for every train flag that has a value, in definition order.

    A deprecated alias given (`--defense`) is written as its replacement (`--objective`).
    """
    lines = []
    for flag in f.get_flags_for_module(train):
        if flag.name in _NOT_RECIPE:
            continue
        text = flag.serialize()
        old = next((o for o, new in train.DEPRECATED.items() if new == flag.name), None)
        if old and f[old].present:
            text = f"--{flag.name}={train.deprecated_alias(f, old, flag.name)}"
        if text:  # None-valued flags (the dataset's defaults) are left out.
            lines.append((flag.name, text))
    return lines


# ------------------------------------------------------------------ entry point


def tune_from_flags(f=FLAGS):
    """Runs the search the parsed flags describe; returns `(tuner, summary)` (summary None on a worker)."""
    base, space, objective_attack, settings = settings_from_flags(f)
    return search.run_search(
        base, space, objective_attack, settings, base_flags=base_flag_lines(f), verbose=f.verbose,
        wait_for_chief_s=f.wait_for_chief,
    )


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    _, summary = tune_from_flags()
    if summary is None:  # A worker of a distributed search: the chief reports.
        return
    print(report.format_table(summary))
    if summary["best"] is not None and summary["best"]["flagfile"]:
        log(f"best: trial {summary['best']['trial_id']}; wrote {summary['best']['flagfile']}")
    else:
        log("no trial finished: no best.flags")


if __name__ == "__main__":
    FLAGS.set_default("verbose", 2)  # One line per epoch: trials are long.
    cli.run(main, "tune", removed=REMOVED)
