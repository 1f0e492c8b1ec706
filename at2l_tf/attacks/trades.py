"""TRADES' inner attack: signed gradient ascent on the KL divergence (Zhang et al., 2019).

    x'_0     = x + σ·N(0, 1)                                      (σ = 0.001)
    x'_{t+1} = Π( x'_t + a · sign(∇_{x'} KL(softmax f(x) ‖ softmax f(x'_t))) )

for `steps` steps, `Π` the projection onto the eps ball around `x` ∩ `[clip_min,
clip_max]`, `f` the logits of the model in inference mode (the caller's
`model_fn`). Unlike PGD on the cross-entropy it needs no label: it looks for
the point of the ball where the prediction *changes* most, whichever the class.

The Gaussian start is needed, not decoration: at `x' = x` the KL is at its
minimum (0) and its gradient is exactly zero, so signed steps from `x` itself
would never move. The steps follow the authors' `trades.py`; as everywhere in
the package, the default step size is `2.5·eps/steps` (the authors' settings —
MNIST 40 steps of 0.01 at eps 0.3, CIFAR-10 10 steps of 2/255 (0.007 in their
code) at 8/255 — are set by the flagfiles). The arithmetic runs in float32
whatever the model's dtype policy (logits are cast before the KL).
"""

import tensorflow as tf

from at2l_tf import losses
from at2l_tf.attacks import _common
from at2l_tf.attacks.iterative import default_step

GAUSSIAN_START = 0.001


def trades_kl(
    model_fn,
    x,
    y=None,
    *,
    eps,
    steps=10,
    step_size=None,
    sigma=GAUSSIAN_START,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
):
    """TRADES' KL attack (label-free PGD on `KL(f(x) ‖ f(x'))`).

    Args:
        model_fn: callable mapping images to logits (the model in inference mode).
        x: images `(batch, ...)` in the box.
        y: accepted for the common signature and ignored (the KL needs no label).
        eps: L-inf radius (>= 0).
        steps: signed gradient steps (>= 1).
        step_size: per-step size; default `2.5 * eps / steps`.
        sigma: standard deviation of the Gaussian start (>= 0; 0.001 as the authors).
        clip_min, clip_max: the valid pixel box.
        seed: op seed of the Gaussian start.

    Returns:
        `x_adv` (float32) with `||x_adv - x||_inf <= eps`, inside the box.
    """
    del y
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("steps", steps)
    _common.check_nonnegative("sigma", sigma)
    _common.check_box(clip_min, clip_max)
    step_size = default_step(eps, steps, step_size)
    _common.check_nonnegative("step_size", step_size)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    if eps == 0 or step_size == 0:
        return x
    clean_logits = tf.stop_gradient(tf.cast(model_fn(x), tf.float32))

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            kl = tf.reduce_sum(losses.kl_divergence(clean_logits, model_fn(x_adv)))
        grad = tape.gradient(kl, x_adv)
        x_adv = x_adv + step_size * tf.sign(tf.cast(grad, tf.float32))
        return i + 1, _common.project_linf(x_adv, x, eps, clip_min, clip_max)

    start = _common.gaussian_start(x, sigma, seed)
    _, x_adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), start))
    return tf.stop_gradient(x_adv)
