"""Adversarial attacks as functions: `attack(model_fn, x, y=None, **params) -> x_adv`.

`model_fn` maps images to logits (call the model with `training=False`).
L-inf attacks keep `||x_adv - x||_inf <= eps` and `x_adv` inside `[clip_min, clip_max]`;
the L2 attacks (C&W, DeepFool) look for the smallest perturbation that fools the model.
For a robustness figure, use `autoattack` (APGD-CE, APGD-T, Square): PGD with a
fixed step size overstates robustness. Against a defence layer that masks
gradients, wrap `model_fn` in its adaptive attack: `bpda.bpda_model_fn`
(thermometer encoding, Defense-GAN) or `eot.eot_model_fn` (randomization).
"""

from at2l_tf.attacks.apgd import apgd_ce, apgd_dlr, apgd_t
from at2l_tf.attacks.autoattack import autoattack
from at2l_tf.attacks.carlini_wagner import carlini_wagner_l2
from at2l_tf.attacks.deepfool import deepfool
from at2l_tf.attacks.fast_gradient import fgsm, fgsm_rs, ll
from at2l_tf.attacks.iterative import ifgsm, ill, pgd
from at2l_tf.attacks.ls_pga import ls_pga
from at2l_tf.attacks.registry import (
    TRAINING_ATTACKS,
    Param,
    available_attacks,
    get_attack,
    get_entry,
    make_attack,
)
from at2l_tf.attacks.square import square
from at2l_tf.attacks.trades import trades_kl

__all__ = [
    "TRAINING_ATTACKS",
    "Param",
    "apgd_ce",
    "apgd_dlr",
    "apgd_t",
    "autoattack",
    "available_attacks",
    "carlini_wagner_l2",
    "deepfool",
    "fgsm",
    "fgsm_rs",
    "get_attack",
    "get_entry",
    "ifgsm",
    "ill",
    "ll",
    "ls_pga",
    "make_attack",
    "pgd",
    "square",
    "trades_kl",
]
