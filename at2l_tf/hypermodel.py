"""KerasTuner hypermodel of AT²L: λ1, λ2, α and the logit norm as hyperparameters,
and optionally the objective (`defense`), β, and the triplet's features and negatives.

The loss being tuned (Eq. 1 and 2 of the paper):

    L = 1/((1+λ1) k) · Σ [CE(x_i, y_i) + λ1 · CE(x_adv_i, y_i)]
      + λ2/k · Σ max( d(f(x_adv_i), f(x_i)) − d(f(x_adv_i), f(x_n_i)) + α, 0 )

`AT2LHyperModel` wraps the existing builder (`experiment.build_model`): every
trial is the base `ExperimentConfig` with λ1 (`lambda1`), λ2 (`lambda2`), α
(`margin`) and the distance `d` (`norm`) substituted, trained on the base
config's data and budget (`epochs`, `max_train_examples`) with the base seed,
so that every trial sees the same initial weights and the same data order.

The search may also cover the objective itself (`SearchSpace.defenses`, e.g.
`at, at2l, trades, mart`), TRADES' / MART's β (`beta_range`), and the triplet
term's features (`logits | embedding`) and negatives (`random | hardest`);
by default it does not (the base config's values are kept). A trial only
takes the values its objective uses (`used_by`): an `at` trial of a search
that also covers `at2l` keeps the base λ2, so it stays plain AT.

The objective is **not** the training attack's accuracy (`val_adv_acc`): a
defence that masks gradients, or fits its own attack, scores well there and
badly under anything stronger (README: FGSM-RS training). `RobustAccuracy`
measures, after every epoch, the accuracy under a stronger attack (APGD-CE by
default) on the first N validation images and logs it as `val_robust_acc`,
which the tuner maximises (`objective()`; KerasTuner takes a trial's value
from its best epoch).

KerasTuner runs only `build` under its distribution strategy, and deep-copies
the callbacks passed to `search` once per execution; `fit` therefore makes
its own `RobustAccuracy` for every run (and the callback deep-copies itself
into a fresh one anyway).
"""

import dataclasses
import math
from typing import Optional

import keras
import keras_tuner

from at2l_tf import data, defenses, evaluation, experiment, precision
from at2l_tf.errors import ConfigError
from at2l_tf.losses import NORMS
from at2l_tf.training import objectives

OBJECTIVE_METRIC = "val_robust_acc"

# Stronger-than-training attacks the objective may use: L-inf, gradient-based,
# with `steps` and `restarts`. APGD-T runs 9 targets (9× the cost of APGD-CE).
OBJECTIVE_ATTACKS = ("apgd_ce", "apgd_dlr", "apgd_t", "pgd")

# The triplet term's hyperparameters (names as the train flags).
TRIPLET_HYPERPARAMETERS = ("lambda2", "margin", "norm", "triplet_features", "triplet_negative")
# The hyperparameters each training objective uses (with its default λ2).
TUNED_BY_DEFENSE = {
    "at": ("lambda1",),  # Eq. 1: λ1 only (λ2 > 0 in the base adds the triplet's).
    "at2l": ("lambda1",) + TRIPLET_HYPERPARAMETERS,  # Eq. 2.
    "tr": TRIPLET_HYPERPARAMETERS,  # Clean CE + the triplet term.
    "trades": ("beta",),  # CE + β KL (+ the triplet's with λ2 > 0 in the base).
    "mart": ("beta",),  # BCE + β KL (1 - p_y) (idem).
}
# Search order of all hyperparameters (the trial's objective first).
ALL_HYPERPARAMETERS = ("defense", "lambda1", "lambda2", "margin", "norm", "beta",
                       "triplet_features", "triplet_negative")


def used_by(defense, lambda2=None):
    """The hyperparameters `defense` uses, the triplet's too when the base λ2 turns it on."""
    names = TUNED_BY_DEFENSE[defense]
    if "lambda2" not in names and objectives.uses_triplet(defense, lambda2):
        names = names + TRIPLET_HYPERPARAMETERS
    return names


def objective():
    """The tuner's objective: maximise `val_robust_acc`.

    A string objective such as `"val_robust_acc"` would leave KerasTuner
    unable to infer the direction, hence the explicit `Objective`.
    """
    return keras_tuner.Objective(OBJECTIVE_METRIC, direction="max")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where λ1, λ2, α and the logit norm are searched.

    A range is `(min, max)`; `min == max` fixes the value; `None` (or, for
    `norms`, an empty tuple) keeps the base config's value untuned.

    The objective, β and the triplet's features and negatives are not searched
    unless given (`defenses`, `beta_range`, `triplet_features`,
    `triplet_negatives`); with `defenses`, each trial draws its objective and
    takes only the values that objective uses.

    Attributes:
        lambda1_range: λ1, weight of the adversarial CE (Eq. 1), sampled uniformly.
        lambda2_range: λ2, weight of the triplet term (Eq. 2), log-uniform (min > 0).
        margin_range: α, the triplet margin, log-uniform (min > 0). L∞ distances
            between logits of a trained MNIST model run to tens, so α = 0.5
            constrains little (DESIGN.md, "Known pitfalls"): the default
            reaches 20.
        norms: triplet distances `d` to choose from (`linf`, `l2`, `l1`, `cosine`).
        defenses: objectives (train's `--defense` names) to choose from; empty
            keeps the base config's.
        beta_range: β of trades / mart, log-uniform (min > 0).
        triplet_features: triplet features to choose from (`logits`, `embedding`).
        triplet_negatives: triplet negatives to choose from (`random`, `hardest`).
    """

    lambda1_range: Optional[tuple] = (0.5, 2.0)
    lambda2_range: Optional[tuple] = (1e-3, 2.0)
    margin_range: Optional[tuple] = (0.05, 20.0)
    norms: tuple = ("linf", "l2")
    defenses: tuple = ()
    beta_range: Optional[tuple] = None
    triplet_features: tuple = ()
    triplet_negatives: tuple = ()

    def validate(self, defense, lambda2=None):
        """Checks the ranges; raises `ConfigError` naming the first bad one.

        Args:
            defense: the base config's training objective; `none` has nothing
                to tune.
            lambda2: the base config's λ2 (`None`: the objective's default).
        """
        for d in self.defenses:
            if d not in TUNED_BY_DEFENSE:
                raise ConfigError(
                    f"defense {d!r} in defense_choices has nothing to tune; choose among "
                    f"{', '.join(TUNED_BY_DEFENSE)}"
                )
        if not self.defenses and defense not in TUNED_BY_DEFENSE:
            raise ConfigError(
                f"defense={defense!r} has no λ1, λ2 or α to tune: use --defense="
                f"{' | '.join(TUNED_BY_DEFENSE)}"
            )
        for name, log in (("lambda1_range", False), ("lambda2_range", True), ("margin_range", True),
                          ("beta_range", True)):
            r = getattr(self, name)
            if r is None:
                continue
            received = f"received {name}={_fmt_range(r)}"
            if len(r) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
                raise ConfigError(f"{name} must be two finite numbers 'min,max', {received}")
            if r[0] > r[1]:
                raise ConfigError(f"{name} must have min <= max, {received}")
            if log and r[0] <= 0:
                raise ConfigError(f"{name} is sampled on a log scale: min must be > 0, {received}")
            if r[0] < 0:
                raise ConfigError(f"{name} must have min >= 0, {received}")
        for norm in self.norms:
            if norm not in NORMS:
                raise ConfigError(f"unknown norm {norm!r} in norms; known norms: {', '.join(NORMS)}")
        for name, values, known in (
            ("triplet_features_choices", self.triplet_features, objectives.TRIPLET_FEATURES),
            ("triplet_negative_choices", self.triplet_negatives, objectives.TRIPLET_NEGATIVES),
        ):
            for v in values:
                if v not in known:
                    raise ConfigError(f"unknown {name[:-8]} {v!r} in {name}; known: {', '.join(known)}")
        if not self.tuned(defense, lambda2):
            uses = sorted({n for d in (self.defenses or (defense,)) for n in used_by(d, lambda2)},
                          key=ALL_HYPERPARAMETERS.index)
            raise ConfigError(
                f"nothing to tune: defense={defense!r} uses {', '.join(uses)}, "
                "and every one of their ranges is empty"
            )
        return self

    def tuned(self, defense, lambda2=None):
        """Names of the hyperparameters searched for `defense` (a range or choices given).

        With `defenses`, the objective is one of them (`defense` first) and the
        others are those any of them uses.
        """
        given = {
            "defense": bool(self.defenses),
            "lambda1": self.lambda1_range is not None,
            "lambda2": self.lambda2_range is not None,
            "margin": self.margin_range is not None,
            "norm": bool(self.norms),
            "beta": self.beta_range is not None,
            "triplet_features": bool(self.triplet_features),
            "triplet_negative": bool(self.triplet_negatives),
        }
        used = {"defense"}
        for d in self.defenses or (defense,):
            used.update(used_by(d, lambda2) if d in TUNED_BY_DEFENSE else ())
        return tuple(n for n in ALL_HYPERPARAMETERS if n in used and given[n])

    def record(self):
        """The space as JSON-ready dict; axes added since a search was recorded are
        left out while unused, so that older searches still resume."""
        out = dataclasses.asdict(self)
        for name in ("defenses", "beta_range", "triplet_features", "triplet_negatives"):
            if not out[name]:
                out.pop(name)
        return out


@dataclasses.dataclass(frozen=True)
class ObjectiveAttack:
    """The attack behind `val_robust_acc`: stronger than the training attack.

    Attributes:
        name: one of `OBJECTIVE_ATTACKS`; APGD-CE by default, which needs no
            step size and beat PGD-40 by ~9 points on this project's MNIST
            models (README).
        steps: iterations per restart (20: APGD's step-size schedule already
            has 4 checkpoints; a 500-image batch of `mnist_small` takes a few
            seconds on a CPU).
        restarts: random restarts, each on the examples not yet fooled (APGD)
            or keeping the highest loss (PGD).
        num_examples: the first N images of the validation split. On N images
            a rate p has a standard error of sqrt(p(1 − p)/N): ±1.4 points at
            N = 1,000, p = 0.75, the smallest difference between trials worth
            reading.
    """

    name: str = "apgd_ce"
    steps: int = 20
    restarts: int = 1
    num_examples: int = 1000

    def validate(self, config):
        """Checks the attack against the base `config`; raises `ConfigError`.

        The attack must be one of `OBJECTIVE_ATTACKS`, run on at most the
        validation split's size, and not be weaker than the training attack:
        at least as many iterations (steps × restarts), strictly more when it
        is the training attack itself.
        """
        if self.name not in OBJECTIVE_ATTACKS:
            raise ConfigError(
                f"objective_attack must be one of {', '.join(OBJECTIVE_ATTACKS)}, "
                f"received objective_attack={self.name!r}"
            )
        for name, value in (("objective_steps", self.steps), ("objective_restarts", self.restarts),
                            ("objective_examples", self.num_examples)):
            if value is None or value < 1:
                raise ConfigError(f"{name} must be >= 1, received {name}={value}")
        if self.num_examples > config.data.validation_size:
            raise ConfigError(
                f"objective_examples must be <= validation_size={config.data.validation_size} "
                f"(the objective uses validation images only), received "
                f"objective_examples={self.num_examples}"
            )
        classes = config.spec.num_classes
        needed = {"apgd_dlr": 3, "apgd_t": 4}.get(self.name, 2)
        if classes < needed:
            raise ConfigError(
                f"objective_attack={self.name} needs >= {needed} classes; "
                f"{config.data.dataset} has {classes}"
            )
        train_steps = config.attack.params().get("steps", 1)
        iterations = self.steps * self.restarts
        same = self.name == config.attack.name
        if iterations < train_steps or (same and iterations <= train_steps):
            raise ConfigError(
                f"the objective attack must be stronger than the training attack "
                f"({config.attack.name}, steps={train_steps}): received objective_attack={self.name} "
                f"with objective_steps={self.steps}, objective_restarts={self.restarts}"
            )
        return self

    def spec(self, eps):
        """The `evaluation.AttackSpec` at radius `eps` (the training eps)."""
        return evaluation.AttackSpec(
            self.name, {"eps": eps, "steps": self.steps, "restarts": self.restarts}
        )

    def describe(self, eps):
        """One line for logs and flagfile headers, e.g. `apgd_ce (20 steps, 1 restart, eps 0.3)`."""
        plural = "" if self.restarts == 1 else "s"
        return f"{self.name} ({self.steps} steps, {self.restarts} restart{plural}, eps {eps:.4g})"


class RobustAccuracy(keras.callbacks.Callback):
    """Logs the accuracy under a (strong) attack at the end of every epoch.

    The number is the share of `dataset`'s first `num_examples` images that
    the model classifies correctly both clean and after the attack
    (`evaluation.robustness_report`'s `robust_accuracy`), written into the
    epoch's `logs` as `name` (default `val_robust_acc`), so that History,
    the progress line, KerasTuner and `SaveBestEpoch` all see it. It must
    come *before* those callbacks in the list (Keras appends History and the
    progress bar last).

    The attack runs on the classifier in inference mode (`training=False`).
    Behind a defence layer, gradient attacks go through the layer's adaptive
    attack (BPDA for the thermometer code, EOT for random resizing), as in
    the train command's final check.

    Args:
        dataset: batched `(images, labels)`; the images to attack.
        attack: an `evaluation.AttackSpec` (its `params` include `eps`).
        num_examples: how many of `dataset`'s examples to use; default all.
        name: the key in `logs`; a `val_` prefix marks it as a validation metric.
    """

    def __init__(self, dataset, attack, *, num_examples=None, name=OBJECTIVE_METRIC):
        super().__init__()
        self.dataset = dataset
        self.attack = attack
        self.num_examples = num_examples
        self.name = name
        self.last_report = None
        self._model_fn = self._specs = None
        self._trained = self._twin = None

    def __deepcopy__(self, memo):
        # KerasTuner deep-copies callbacks per execution; a tf.data pipeline
        # cannot be deep-copied, and it is read-only: share it, reset the rest.
        return type(self)(self.dataset, self.attack, num_examples=self.num_examples, name=self.name)

    def on_train_begin(self, logs=None):
        classifier = getattr(self.model, "classifier", self.model)
        # Robustness is judged in float32: a mixed-precision classifier gets a
        # float32 twin, whose weights follow it at every epoch end.
        self._trained = classifier
        self._twin = precision.to_float32(classifier)
        # One model_fn per fit, so that compiled attacks trace once per trial.
        layer, self._model_fn, net_fn = defenses.compose.inference_fns(self._twin)
        self._specs = evaluation.adaptive.adapt(
            [self.attack], layer=layer, net_fn=net_fn, model_fn=self._model_fn
        )

    def on_epoch_end(self, epoch, logs=None):
        if self._model_fn is None:
            self.on_train_begin()
        if self._twin is not self._trained:
            self._twin.set_weights(self._trained.get_weights())
        report = evaluation.robustness_report(
            self._model_fn, self.dataset, self._specs, num_examples=self.num_examples, verbose=0
        )
        self.last_report = report
        if logs is not None:
            logs[self.name] = report["robust_accuracy"]


class AT2LHyperModel(keras_tuner.HyperModel):
    """Builds and trains one AT²L configuration per trial.

    Hyperparameters (names as the train flags): `defense` (choice), `lambda1`
    (λ1, uniform), `lambda2` (λ2, log-uniform), `margin` (α, log-uniform),
    `norm` (choice), `beta` (β, log-uniform), `triplet_features` and
    `triplet_negative` (choices), each only if an objective of the search uses
    it (`used_by`) and its range is given; a range with min == max is a fixed value.

    Execution j of a trial (`executions_per_trial`) uses seed `base seed + j`:
    every trial sees the same initial weights, data order and negatives as
    every other (a fair comparison), and several executions average over the
    same seeds for all trials.

    Args:
        base_config: the validated `ExperimentConfig` every trial starts from;
            its `epochs` and `max_train_examples` are the per-trial budget.
        space: a `SearchSpace`.
        objective_attack: an `ObjectiveAttack`.
        verbose: Keras verbosity of each trial's `fit` (2: one line per epoch).
        name: the hypermodel's name.
    """

    def __init__(self, base_config, space, objective_attack, *, verbose=2, name="at2l"):
        super().__init__(name=name)
        self.base_config = base_config
        self.space = space
        self.objective_attack = objective_attack
        self.verbose = verbose
        self.tuned = space.tuned(base_config.train.defense, base_config.train.lambda2)
        self._last_hp = None
        self._execution = 0
        self._config = None
        self._steps_per_epoch = None
        self._objective_ds = None
        # Decided once for the whole search (the tune command says it first).
        self.precision = experiment.resolve_precision(base_config)

    def declare(self, hp):
        """Declares the tuned hyperparameters in `hp`; returns `{name: value}`."""
        s = self.space
        values = {}
        choices = {"defense": s.defenses, "norm": s.norms, "triplet_features": s.triplet_features,
                   "triplet_negative": s.triplet_negatives}
        for name in self.tuned:
            if name in choices:
                options = tuple(dict.fromkeys(choices[name]))
                values[name] = (
                    hp.Fixed(name, options[0]) if len(options) == 1 else hp.Choice(name, options)
                )
                continue
            low, high = getattr(s, f"{name}_range")
            if low == high:
                values[name] = hp.Fixed(name, float(low))
            else:
                sampling = "linear" if name == "lambda1" else "log"
                values[name] = hp.Float(name, float(low), float(high), sampling=sampling)
        return values

    def config_for(self, values, execution=0):
        """The base config with `values` and seed `base + execution`.

        Only the values the trial's objective uses are taken (`used_by`); β and
        the triplet's features and negatives go back to their defaults for an
        objective that does not use them.
        """
        base = self.base_config.train
        defense = values.get("defense", base.defense)
        used = used_by(defense, base.lambda2)
        own = {k: v for k, v in values.items() if k in used}
        reset = {}
        if defense != base.defense:
            defaults = type(base)()
            reset = {n: getattr(defaults, n) for n in ("beta", "triplet_features", "triplet_negative")
                     if n not in used}
        train = dataclasses.replace(
            base, defense=defense, **reset, **own, seed=base.seed + execution
        )
        return dataclasses.replace(self.base_config, train=train)

    def build(self, hp):
        """Builds and compiles the `AT2LModel` of this trial (under the tuner's strategy)."""
        values = self.declare(hp)
        # KerasTuner builds once per execution with the trial's own `hp` object.
        self._execution = self._execution + 1 if hp is self._last_hp else 0
        self._last_hp = hp
        self._config = self.config_for(values, self._execution)
        keras.utils.set_random_seed(self._config.train.seed)
        return experiment.build_model(
            self._config, steps_per_epoch=self._steps(self._config), precision=self.precision
        )

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        """Trains `model` on the base config's data and returns the `History`.

        The data come from the base config, not from `search`'s arguments
        (positional ones are refused). `epochs`/`initial_epoch` (set by
        Hyperband) default to the config's epochs and 0; `verbose` from
        `search` is the tuner's display, not fit's.
        """
        if args:
            raise ValueError(
                "AT2LHyperModel.fit takes its data from the base config; "
                f"received {len(args)} positional argument(s) from search()"
            )
        kwargs.pop("verbose", None)
        config = self._config if self._config is not None else self.config_for(hp.values)
        keras.utils.set_random_seed(config.train.seed)  # Same data order in every trial.
        train_ds, val_ds = experiment.load_datasets(config)
        robust = RobustAccuracy(
            self.objective_dataset(),
            self.objective_attack.spec(config.eps),
            num_examples=self.objective_attack.num_examples,
        )
        return model.fit(
            train_ds,
            epochs=epochs or config.train.epochs,
            initial_epoch=initial_epoch,
            validation_data=val_ds,
            callbacks=[robust, *(callbacks or [])],
            verbose=self.verbose,
            shuffle=False,
            **kwargs,
        )

    def objective_dataset(self):
        """The first `objective_attack.num_examples` validation images, batched (cached)."""
        if self._objective_ds is None:
            self._objective_ds = data.make_pipeline(
                experiment.load_split(
                    self.base_config, "validation", self.objective_attack.num_examples
                ),
                batch_size=max(self.base_config.data.batch_size, 256),
            )
        return self._objective_ds

    def _steps(self, config):
        # Only a learning-rate schedule needs the steps per epoch.
        if config.train.lr_schedule == "constant":
            return None
        if self._steps_per_epoch is None:
            train_ds, _ = experiment.load_datasets(config)
            self._steps_per_epoch = int(train_ds.cardinality())
        return self._steps_per_epoch if self._steps_per_epoch > 0 else None


def _fmt_range(r):
    return ",".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in r)


__all__ = [
    "ALL_HYPERPARAMETERS",
    "AT2LHyperModel",
    "OBJECTIVE_ATTACKS",
    "OBJECTIVE_METRIC",
    "ObjectiveAttack",
    "RobustAccuracy",
    "SearchSpace",
    "TRIPLET_HYPERPARAMETERS",
    "TUNED_BY_DEFENSE",
    "objective",
    "used_by",
]
