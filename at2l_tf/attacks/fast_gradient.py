"""Single-step L-inf attacks: FGSM, FGSM with random start, and LL.

* FGSM (Goodfellow et al., 2015): `x_adv = clip(x + eps * sign(∇x CE(f(x), y)))`.
* FGSM-RS (Wong et al., 2020): FGSM of step `step_size` (default 1.25 eps) from a
  uniform random start in the eps ball, projected back onto the ball.
* LL (Kurakin et al., 2017): targeted FGSM towards the least-likely class
  `y_LL = argmin f(x)`: `x_adv = clip(x - eps * sign(∇x CE(f(x), y_LL)))`.

The gradient step is CleverHans' `fast_gradient_method` (it works with TF 2.21
and Keras 3 and runs inside `tf.function`); only the pieces CleverHans lacks
(seeded random start, least-likely targets) are ours. `model_fn` must return
logits and should call the model with `training=False`.
"""

import numpy as np
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from at2l_tf.attacks import _common


def fgsm(model_fn, x, y=None, *, eps, clip_min=0.0, clip_max=1.0, targeted=False):
    """Fast Gradient Sign Method.

    Args:
        model_fn: callable mapping images to logits.
        x: images, float32 `(batch, ...)` inside `[clip_min, clip_max]`.
        y: int labels `(batch,)`; default the model's predictions. With
            `targeted=True`, the target classes.
        eps: L-inf radius (>= 0).
        clip_min, clip_max: the valid pixel box.
        targeted: step towards `y` instead of away from it.

    Returns:
        `x_adv` with `||x_adv - x||_inf <= eps`, inside the box.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_box(clip_min, clip_max)
    if eps == 0:
        return x
    return fast_gradient_method(
        model_fn, x, eps, np.inf, clip_min=clip_min, clip_max=clip_max, y=y, targeted=targeted
    )


def fgsm_rs(model_fn, x, y=None, *, eps, step_size=None, clip_min=0.0, clip_max=1.0, seed=None):
    """FGSM from a uniform random start (Wong et al., "Fast is better than free", 2020).

    Args:
        step_size: size of the signed-gradient step; default `1.25 * eps`.
        seed: `None` draws the random start from TensorFlow's global
            generator; an int draws it statelessly, so that a call depends on
            its inputs only (what `evaluate` needs to resume or split a run).
        Other arguments as in `fgsm`.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_box(clip_min, clip_max)
    step_size = 1.25 * eps if step_size is None else step_size
    _common.check_nonnegative("step_size", step_size)
    if eps == 0:
        return x
    if y is None:
        y = _common.predicted_labels(model_fn, x)
    x_start = _common.random_start(x, eps, clip_min, clip_max, seed)
    x_adv = fast_gradient_method(
        model_fn, x_start, step_size, np.inf, clip_min=clip_min, clip_max=clip_max, y=y
    )
    return _common.project_linf(x_adv, x, eps, clip_min, clip_max)


def ll(model_fn, x, y=None, *, eps, clip_min=0.0, clip_max=1.0):
    """Single-step least-likely-class attack (Kurakin et al., 2017).

    `y` is accepted for a uniform signature and ignored: the target is the
    class of the smallest logit on the clean input.
    """
    del y
    _common.check_nonnegative("eps", eps)
    _common.check_box(clip_min, clip_max)
    if eps == 0:
        return x
    target = _common.least_likely_class(model_fn(x))
    return fast_gradient_method(
        model_fn, x, eps, np.inf, clip_min=clip_min, clip_max=clip_max, y=target, targeted=True
    )
