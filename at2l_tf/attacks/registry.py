"""Attack registry: name -> function, with one calling convention and one home per attack.

Every attack is `attack(model_fn, x, y=None, **params) -> x_adv`, `model_fn`
returning logits. Each registry line declares, besides the function, the
parameters a user may set (`Param`: type, lower bound, help), whether the
attack can run inside a training step, and whether it may be compiled as one
`tf.function` by its caller. Defaults live once, in the function's signature.
The evaluate command builds its `--<attack>_<param>` flags and their checks
from these declarations, so a new attack is its module plus one line here.

`make_attack(name, **params)` binds parameters (`None` means "the attack's
default"; a name the attack does not take is an error) and returns
`fn(model_fn, x, y)`, which is what the trainer and the evaluate command use.
"""

import dataclasses
import inspect

from at2l_tf.attacks import apgd, fast_gradient, iterative, trades
# Functions, not modules: the package re-exports each under its module's name.
from at2l_tf.attacks.autoattack import VERSIONS as AUTOATTACK_VERSIONS
from at2l_tf.attacks.autoattack import autoattack
from at2l_tf.attacks.carlini_wagner import carlini_wagner_l2
from at2l_tf.attacks.deepfool import deepfool
from at2l_tf.attacks.ls_pga import ls_pga
from at2l_tf.attacks.square import square
from at2l_tf.errors import ConfigError

# Parameters every caller sets the same way for all attacks (not per-attack flags).
SHARED_PARAMS = ("eps", "clip_min", "clip_max", "seed", "targeted")


@dataclasses.dataclass(frozen=True)
class Param:
    """A user-settable attack parameter.

    Attributes:
        name: the keyword the attack function takes.
        type: `int`, `float` or `str`.
        help: one line for `--help`.
        low: smallest allowed value (numbers); `None` = unbounded.
        low_exclusive: `low` itself is not allowed.
        choices: allowed values (strings).
        flag: the evaluate flag's name; default `<attack>_<name>`.
    """

    name: str
    type: type
    help: str
    low: float = None
    low_exclusive: bool = False
    choices: tuple = ()
    flag: str = None

    def check(self, value, flag_name=None):
        """Raises `ConfigError` naming the flag unless `value` is allowed (`None` is)."""
        name = flag_name or self.name
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"{name} must be one of {', '.join(map(str, self.choices))}, received {name}={value!r}"
            )
        if self.low is not None:
            bad = value <= self.low if self.low_exclusive else value < self.low
            if bad:
                op = ">" if self.low_exclusive else ">="
                raise ConfigError(f"{name} must be {op} {self.low}, received {name}={value}")


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One registered attack.

    Attributes:
        name: registry name.
        fn: the attack function.
        norm: `"linf"` for eps-bounded attacks, `"l2"` for minimal-norm ones.
        description: one line for `--help` and tables.
        user_params: the `Param`s a user may set.
        training: usable inside a compiled training step (fixed cost, graph-safe).
        compile: the caller may wrap the whole attack in one `tf.function`
            (False for attacks that run their own compiled pieces on subsets).
        black_box: needs no gradients (score-based), so gradient masking
            cannot mislead it: the masking check compares it with the others.
        composite: runs other registered attacks, white- and black-box
            (AutoAttack); left out of the white-vs-black-box comparison.
        inputs: what `model_fn` takes: `"images"`, or `"thermometer"` for
            attacks on the classifier *behind* a thermometer encoding (LS-PGA),
            whose caller also passes the encoding's `levels`.
    """

    name: str
    fn: object
    norm: str
    description: str
    user_params: tuple = ()
    training: bool = False
    compile: bool = True
    black_box: bool = False
    composite: bool = False
    inputs: str = "images"

    @property
    def params(self):
        """Keyword-only parameter names the attack accepts."""
        sig = inspect.signature(self.fn)
        return tuple(
            p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        )

    def default(self, param):
        """The default of `param` in the function's signature (`None` if it has none)."""
        d = inspect.signature(self.fn).parameters[param].default
        return None if d is inspect.Parameter.empty else d

    def flag_name(self, param):
        """The evaluate flag of `param` (a `Param`)."""
        return param.flag or f"{self.name}_{param.name}"


_REGISTRY = {}


def register(name, fn, norm, description, params=(), *, training=False, compile=True,
             black_box=False, composite=False, inputs="images"):
    """Registers attack `name`; every `Param` must be a keyword of `fn`."""
    if name in _REGISTRY:
        raise ValueError(f"attack {name!r} is registered twice")
    entry = AttackEntry(
        name, fn, norm, description, tuple(params), training, compile, black_box, composite,
        inputs,
    )
    for p in entry.user_params:
        if p.name not in entry.params:
            raise ValueError(f"attack {name!r} declares {p.name!r}, which {fn.__name__} does not take")
    _REGISTRY[name] = entry


_STEPS = Param("steps", int, "gradient steps", low=1)
_STEP = Param("step_size", float, "step size; default 2.5*eps/steps", low=0.0)
_RESTARTS = Param("restarts", int, "random restarts, per example the strongest kept", low=1)
_APGD = (
    Param("steps", int, "iterations per run (AutoAttack: 100)", low=1),
    Param("restarts", int, "random restarts, on the examples not yet fooled", low=1),
)

register("fgsm", fast_gradient.fgsm, "linf", "FGSM (Goodfellow et al., 2015)", training=True)
register("fgsm_rs", fast_gradient.fgsm_rs, "linf", "FGSM from a random start (Wong et al., 2020)",
         [Param("step_size", float, "step size; default 1.25*eps", low=0.0)], training=True)
register("ll", fast_gradient.ll, "linf", "single-step least-likely class (Kurakin et al., 2017)",
         training=True)
register("ifgsm", iterative.ifgsm, "linf", "iterative FGSM / BIM (Kurakin et al., 2017)",
         [_STEPS, _STEP], training=True)
register("pgd", iterative.pgd, "linf", "PGD with random start and restarts (Madry et al., 2018)",
         [_STEPS, _STEP, _RESTARTS], training=True)
register("ill", iterative.ill, "linf", "iterative least-likely class (Kurakin et al., 2017)",
         [_STEPS, _STEP], training=True)
register("cw", carlini_wagner_l2, "l2", "Carlini & Wagner L2 (2017), binary search on c", [
    Param("confidence", float, "κ, the logit margin of a success", low=0.0),
    Param("max_iterations", int, "Adam steps per binary-search step", low=1, flag="cw_steps"),
    Param("binary_search_steps", int, "binary-search steps on c", low=1),
    Param("learning_rate", float, "Adam learning rate", low=0.0, low_exclusive=True),
    Param("initial_const", float, "first constant c", low=0.0, low_exclusive=True),
])
register("deepfool", deepfool, "l2", "multi-class DeepFool (Moosavi-Dezfooli et al., 2016)", [
    Param("overshoot", float, "relative overshoot", low=0.0),
    Param("max_iter", int, "maximum steps", low=1),
    Param("num_candidates", int, "candidate classes", low=2),
])
register("ls_pga", ls_pga, "linf",
         "LS-PGA on the classifier behind a thermometer encoding (Buckman et al., 2018)", [
             Param("steps", int, "ascent steps (7 in the authors' training)", low=1),
             Param("step_size", float, "signed step in logit space ξ (0.01)", low=0.0,
                   low_exclusive=True),
         ], training=True, inputs="thermometer")
# TRADES' inner attack; `--objective=trades` picks it whatever `--attack` says.
register("trades_kl", trades.trades_kl, "linf",
         "TRADES' KL attack: label-free PGD on KL(f(x) || f(x')) from x + 0.001 N(0, 1) (Zhang et al., 2019)",
         [_STEPS, _STEP], training=True)
register("apgd_ce", apgd.apgd_ce, "linf", "APGD on cross-entropy (Croce & Hein, 2020)", _APGD,
         compile=False)
register("apgd_dlr", apgd.apgd_dlr, "linf", "APGD on the DLR loss (Croce & Hein, 2020)", _APGD,
         compile=False)
register("apgd_t", apgd.apgd_t, "linf", "APGD on targeted DLR, top-k targets (Croce & Hein, 2020)",
         _APGD + (Param("target_classes", int, "targets; default min(9, classes - 1)", low=1),),
         compile=False)
register("square", square, "linf", "Square attack, score-based (Andriushchenko et al., 2020)", [
    Param("queries", int, "model queries per example (5,000 in AutoAttack)", low=1),
    Param("p_init", float, "initial share of pixels changed (0.8)", low=0.0, low_exclusive=True),
], black_box=True)
register("autoattack", autoattack, "linf",
         "AutoAttack: APGD-CE, APGD-T, Square on the still-robust (Croce & Hein, 2020)", [
             Param("version", str, "standard (APGD-CE, APGD-T, Square) | fast (APGD-CE, APGD-T)",
                   choices=AUTOATTACK_VERSIONS),
             Param("steps", int, "APGD iterations (100)", low=1),
             Param("queries", int, "Square queries (5,000)", low=1),
         ], compile=False, composite=True)

# Attacks usable inside the training step (L-inf, fixed cost per batch).
TRAINING_ATTACKS = tuple(name for name, e in _REGISTRY.items() if e.training)


def available_attacks():
    """Registered attack names, in registration order."""
    return tuple(_REGISTRY)


def get_entry(name):
    """Returns the `AttackEntry` of `name`; a `ConfigError` lists the known names."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown attack {name!r}; known attacks: {', '.join(available_attacks())}"
        )
    return _REGISTRY[name]


def get_attack(name):
    """Returns the attack function registered as `name`."""
    return get_entry(name).fn


def make_attack(name, **params):
    """Binds `params` to attack `name`; returns `fn(model_fn, x, y=None)`.

    Parameters set to `None` are left to the attack's default. A parameter the
    attack does not take is an error (`ConfigError` listing the ones it takes),
    so a misspelt name never falls back silently to a default.
    """
    entry = get_entry(name)
    accepted = entry.params
    unknown = sorted(k for k in params if k not in accepted)
    if unknown:
        raise ConfigError(
            f"attack {name!r} takes no parameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted)}"
        )
    bound = {k: v for k, v in params.items() if v is not None}

    def attack_fn(model_fn, x, y=None, **extra):
        # `extra`: keywords that are not parameters of the attack's result,
        # e.g. AutoAttack's `on_stage` progress callback.
        return entry.fn(model_fn, x, y, **bound, **extra)

    attack_fn.__name__ = f"{name}_attack"
    attack_fn.bound_params = dict(bound)
    attack_fn.compile = entry.compile
    return attack_fn
