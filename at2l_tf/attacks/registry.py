"""Attack registry: name -> function, with one calling convention.

Every attack is `attack(model_fn, x, y=None, **params) -> x_adv`, `model_fn`
returning logits. `make_attack(name, **params)` binds the parameters an attack
accepts (ignoring `None`, which means "the attack's default") and returns
`fn(model_fn, x, y)`, which is what the trainer and the evaluate command use.
"""

import dataclasses
import inspect

from at2l_tf.attacks import fast_gradient, iterative
from at2l_tf.attacks.carlini_wagner import carlini_wagner_l2
# The function, not the module: the package re-exports it under the module's name.
from at2l_tf.attacks.deepfool import deepfool
from at2l_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One registered attack.

    Attributes:
        name: registry name.
        fn: the attack function.
        norm: `"linf"` for eps-bounded attacks, `"l2"` for minimal-norm ones.
        description: one line for `--help` and tables.
    """

    name: str
    fn: object
    norm: str
    description: str

    @property
    def params(self):
        """Keyword-only parameter names the attack accepts."""
        sig = inspect.signature(self.fn)
        return tuple(
            p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        )


_REGISTRY = {}


def register(name, fn, norm, description):
    if name in _REGISTRY:
        raise ValueError(f"attack {name!r} is registered twice")
    _REGISTRY[name] = AttackEntry(name, fn, norm, description)


register("fgsm", fast_gradient.fgsm, "linf", "FGSM (Goodfellow et al., 2015)")
register("fgsm_rs", fast_gradient.fgsm_rs, "linf", "FGSM from a random start (Wong et al., 2020)")
register("ll", fast_gradient.ll, "linf", "single-step least-likely class (Kurakin et al., 2017)")
register("ifgsm", iterative.ifgsm, "linf", "iterative FGSM / BIM (Kurakin et al., 2017)")
register("pgd", iterative.pgd, "linf", "PGD with random start and restarts (Madry et al., 2018)")
register("ill", iterative.ill, "linf", "iterative least-likely class (Kurakin et al., 2017)")
register("cw", carlini_wagner_l2, "l2", "Carlini & Wagner L2 (2017), binary search on c")
register("deepfool", deepfool, "l2", "multi-class DeepFool (Moosavi-Dezfooli et al., 2016)")

# Attacks usable inside the training step (L-inf, fixed cost per batch).
TRAINING_ATTACKS = ("fgsm", "fgsm_rs", "ifgsm", "pgd", "ll", "ill")


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

    Parameters set to `None` are left to the attack's default; parameters the
    attack does not take are ignored, so one configuration can drive every
    attack (e.g. `steps` is meaningless for FGSM).
    """
    entry = get_entry(name)
    accepted = set(entry.params)
    bound = {k: v for k, v in params.items() if v is not None and k in accepted}

    def attack_fn(model_fn, x, y=None):
        return entry.fn(model_fn, x, y, **bound)

    attack_fn.__name__ = f"{name}_attack"
    attack_fn.bound_params = dict(bound)
    return attack_fn
