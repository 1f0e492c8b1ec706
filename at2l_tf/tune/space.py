"""What a search searches: the hyperparameters each objective uses, their ranges
(`SearchSpace`) and the attack behind the tuner's objective (`ObjectiveAttack`).

The objective is **not** the training attack's accuracy (`val_adv_acc`): a
defence that masks gradients, or fits its own attack, scores well there and
badly under anything stronger. The tuner maximises `val_robust_acc`, the
accuracy under `ObjectiveAttack` (APGD-CE by default) on the first N
validation images, measured after every epoch on the classifier's float32
twin (`hypermodel.RobustAccuracy`); KerasTuner takes a trial's value from its
best epoch.
"""

import dataclasses
import math
from typing import Optional

import keras_tuner

from at2l_tf import evaluation, identity
from at2l_tf.errors import ConfigError
from at2l_tf.losses import DISTANCES
from at2l_tf.training import objectives

OBJECTIVE_METRIC = "val_robust_acc"

# Stronger-than-training attacks the objective may use: L-inf, gradient-based,
# with `steps` and `restarts`. APGD-T runs 9 targets (9× the cost of APGD-CE).
OBJECTIVE_ATTACKS = ("apgd_ce", "apgd_dlr", "apgd_t", "pgd")

# The triplet term's hyperparameters (names as the train flags and the `TrainConfig` fields).
TRIPLET_HYPERPARAMETERS = ("lambda2", "margin", "triplet_distance", "triplet_features", "triplet_negative")
# The hyperparameters each training objective uses (with its default λ2).
TUNED_BY_OBJECTIVE = {
    "at": ("lambda1",),  # Eq. 1: λ1 only (λ2 > 0 in the base adds the triplet's).
    "at2l": ("lambda1",) + TRIPLET_HYPERPARAMETERS,  # Eq. 2.
    "tr": TRIPLET_HYPERPARAMETERS,  # Clean CE + the triplet term.
    "trades": ("beta",),  # CE + β KL (+ the triplet's with λ2 > 0 in the base).
    "mart": ("beta",),  # BCE + β KL (1 - p_y) (idem).
}
# Search order of all hyperparameters (the trial's objective first).
ALL_HYPERPARAMETERS = ("objective", "lambda1", "lambda2", "margin", "triplet_distance", "beta",
                       "triplet_features", "triplet_negative")


def used_by(objective, lambda2=None):
    """The hyperparameters `objective` uses, the triplet's too when the base λ2 turns it on."""
    names = TUNED_BY_OBJECTIVE[objective]
    if "lambda2" not in names and objectives.uses_triplet(objective, lambda2):
        names = names + TRIPLET_HYPERPARAMETERS
    return names


def trial_values(values):
    """A trial's KerasTuner values (`HyperParameters.values`) by today's names: a search
    started before the rename declared `objective` and `triplet_distance` as `defense`
    and `norm` (`identity.renamed`; `AT2LHyperModel.declare`)."""
    return identity.renamed(values, "hyperparameters")


def objective():
    """The tuner's objective: maximise `val_robust_acc`.

    A string objective such as `"val_robust_acc"` would leave KerasTuner
    unable to infer the direction, hence the explicit `Objective`.
    """
    return keras_tuner.Objective(OBJECTIVE_METRIC, direction="max")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where λ1, λ2, α and the triplet distance are searched.

    A range is `(min, max)`; `min == max` fixes the value; `None` (or, for
    `triplet_distances`, an empty tuple) keeps the base config's value untuned.

    The objective, β and the triplet's features and negatives are not searched
    unless given (`objectives`, `beta_range`, `triplet_features`,
    `triplet_negatives`); with `objectives`, each trial draws its objective and
    takes only the values that objective uses.

    Attributes:
        lambda1_range: λ1, weight of the adversarial CE (Eq. 1), sampled uniformly.
        lambda2_range: λ2, weight of the triplet term (Eq. 2), log-uniform (min > 0).
        margin_range: α, the triplet margin, log-uniform (min > 0). L∞ distances
            between logits of a trained MNIST model run to tens, so α = 0.5
            constrains little: the default range reaches 20.
        triplet_distances: triplet distances `d` to choose from (`linf`, `l2`, `l1`,
            `cosine`; flag `--triplet_distance_choices`).
        objectives: objectives (train's `--objective` names; flag
            `--objective_choices`) to choose from; empty keeps the base config's.
            (A `search.json` written before the rename calls these two `norms` and
            `defenses`: `identity.renamed` reads it.)
        beta_range: β of trades / mart, log-uniform (min > 0).
        triplet_features: triplet features to choose from (`logits`, `embedding`).
        triplet_negatives: triplet negatives to choose from (`random`, `hardest`).
    """

    lambda1_range: Optional[tuple] = (0.5, 2.0)
    lambda2_range: Optional[tuple] = (1e-3, 2.0)
    margin_range: Optional[tuple] = (0.05, 20.0)
    triplet_distances: tuple = ("linf", "l2")
    objectives: tuple = ()
    beta_range: Optional[tuple] = None
    triplet_features: tuple = ()
    triplet_negatives: tuple = ()

    def validate(self, objective, lambda2=None):
        """Checks the ranges; raises `ConfigError` naming the first bad one.

        Args:
            objective: the base config's training objective; `none` has nothing
                to tune.
            lambda2: the base config's λ2 (`None`: the objective's default).
        """
        for o in self.objectives:
            if o not in TUNED_BY_OBJECTIVE:
                raise ConfigError(
                    f"objective {o!r} in objective_choices has nothing to tune; choose among "
                    f"{', '.join(TUNED_BY_OBJECTIVE)}"
                )
        if not self.objectives and objective not in TUNED_BY_OBJECTIVE:
            raise ConfigError(
                f"objective={objective!r} has no λ1, λ2 or α to tune: use --objective="
                f"{' | '.join(TUNED_BY_OBJECTIVE)}"
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
        for distance in self.triplet_distances:
            if distance not in DISTANCES:
                raise ConfigError(
                    f"unknown triplet_distance {distance!r} in triplet_distance_choices; known: {', '.join(DISTANCES)}"
                )
        for name, values, known in (
            ("triplet_features_choices", self.triplet_features, objectives.TRIPLET_FEATURES),
            ("triplet_negative_choices", self.triplet_negatives, objectives.TRIPLET_NEGATIVES),
        ):
            for v in values:
                if v not in known:
                    raise ConfigError(f"unknown {name[:-8]} {v!r} in {name}; known: {', '.join(known)}")
        if not self.tuned(objective, lambda2):
            uses = sorted({n for o in (self.objectives or (objective,)) for n in used_by(o, lambda2)},
                          key=ALL_HYPERPARAMETERS.index)
            raise ConfigError(
                f"nothing to tune: objective={objective!r} uses {', '.join(uses)}, "
                "and every one of their ranges is empty"
            )
        return self

    def tuned(self, objective, lambda2=None):
        """Names of the hyperparameters searched for `objective` (a range or choices given).

        With `objectives`, the objective is one of them (`objective` first) and the
        others are those any of them uses.
        """
        given = {
            "objective": bool(self.objectives),
            "lambda1": self.lambda1_range is not None,
            "lambda2": self.lambda2_range is not None,
            "margin": self.margin_range is not None,
            "triplet_distance": bool(self.triplet_distances),
            "beta": self.beta_range is not None,
            "triplet_features": bool(self.triplet_features),
            "triplet_negative": bool(self.triplet_negatives),
        }
        used = {"objective"}
        for o in self.objectives or (objective,):
            used.update(used_by(o, lambda2) if o in TUNED_BY_OBJECTIVE else ())
        return tuple(n for n in ALL_HYPERPARAMETERS if n in used and given[n])

    def record(self):
        """The space as JSON-ready dict; axes added since a search was recorded are
        left out while unused, so that older searches still resume."""
        out = dataclasses.asdict(self)
        for name in ("objectives", "beta_range", "triplet_features", "triplet_negatives"):
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


def _fmt_range(r):
    return ",".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in r)


__all__ = [
    "ALL_HYPERPARAMETERS",
    "OBJECTIVE_ATTACKS",
    "OBJECTIVE_METRIC",
    "ObjectiveAttack",
    "SearchSpace",
    "TRIPLET_HYPERPARAMETERS",
    "TUNED_BY_OBJECTIVE",
    "objective",
    "trial_values",
    "used_by",
]
