"""Iterative L-inf attacks: I-FGSM (BIM), PGD with restarts, and I-LL.

* I-FGSM / BIM (Kurakin et al., 2017): `x_{t+1} = Π(x_t + a * sign(∇x CE(f(x_t), y)))`
  for `steps` steps from `x_0 = x`, `Π` the projection onto the eps ball ∩ [0, 1].
* PGD (Madry et al., 2018): the same from a uniform random start in the eps
  ball; with `restarts > 1`, the per-example adversarial of highest loss wins.
* I-LL (Kurakin et al., 2017): I-FGSM targeted at the least-likely class.

Default step size `a = 2.5 * eps / steps` (Madry et al.), so the iterate can
cross the ball and still has steps left to refine.

The loop is CleverHans' `projected_gradient_descent` (graph-safe; each step is
one input gradient, a sign and a projection), written out with its own pieces
so that the random start can be seeded. Restarts and least-likely targets are
ours. Random starts come from TensorFlow's global seed
(`keras.utils.set_random_seed`), as in CleverHans, or statelessly from `seed`.
"""

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

from at2l_tf.attacks import _common


def default_step(eps, steps, step_size):
    """`step_size`, or the default `2.5 * eps / steps` when it is `None`."""
    return 2.5 * eps / steps if step_size is None else step_size


def _iterate(model_fn, x, y, eps, steps, step_size, clip_min, clip_max, rand_init, targeted,
             seed=None):
    """`steps` signed-gradient steps from `x` (or a random start), projected each time.

    `seed`: `None` (the random start from the global generator) or the
    `[2]` int64 seed of a stateless draw.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("steps", steps)
    _common.check_box(clip_min, clip_max)
    step_size = default_step(eps, steps, step_size)
    _common.check_nonnegative("step_size", step_size)
    if eps == 0 or step_size == 0:
        return x
    # CleverHans asserts step_size <= eps; a larger step is just clipped by the
    # projection, so the cap changes nothing but the assertion.
    step_size = min(step_size, eps)
    x = tf.convert_to_tensor(x)
    # CleverHans' `projected_gradient_descent` (L-inf) step by step, its own
    # `fast_gradient_method` and `clip_eta`, with the random start drawn here
    # so that it can be seeded: the same ops, in the same order.
    if not rand_init:
        eta = tf.zeros_like(x)
    elif seed is None:
        eta = tf.random.uniform(tf.shape(x), -eps, eps, dtype=x.dtype)  # CleverHans' draw.
    else:
        eta = tf.random.stateless_uniform(
            tf.shape(x), seed=seed, minval=-eps, maxval=eps, dtype=x.dtype
        )
    adv_x = tf.clip_by_value(x + clip_eta(eta, np.inf, eps), clip_min, clip_max)
    if y is None:
        y = tf.argmax(model_fn(x), 1)
    for _ in range(steps):
        adv_x = fast_gradient_method(
            model_fn, adv_x, step_size, np.inf, clip_min=clip_min, clip_max=clip_max, y=y,
            targeted=targeted,
        )
        adv_x = tf.clip_by_value(x + clip_eta(adv_x - x, np.inf, eps), clip_min, clip_max)
    return adv_x


def ifgsm(model_fn, x, y=None, *, eps, steps=10, step_size=None, clip_min=0.0, clip_max=1.0):
    """Iterative FGSM / Basic Iterative Method (no random start).

    Args:
        model_fn: callable mapping images to logits.
        x: images `(batch, ...)` in the box.
        y: int labels; default the model's predictions.
        eps: L-inf radius (>= 0).
        steps: number of gradient steps (>= 1).
        step_size: per-step size; default `2.5 * eps / steps`.

    Returns:
        `x_adv` with `||x_adv - x||_inf <= eps`, inside the box.
    """
    return _iterate(model_fn, x, y, eps, steps, step_size, clip_min, clip_max, False, False)


def pgd(
    model_fn,
    x,
    y=None,
    *,
    eps,
    steps=40,
    step_size=None,
    restarts=1,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
):
    """Projected gradient descent with random start (Madry et al., 2018).

    Args:
        restarts: independent random starts (>= 1); per example, the
            adversarial with the highest cross-entropy is returned.
        seed: `None` (default) draws the random starts from TensorFlow's
            global generator, as CleverHans does (`keras.utils.set_random_seed`
            makes a run repeatable, not one call); an int (or int tensor) draws
            them statelessly from `(seed, restart)`, so that a call depends on
            its inputs only: the same images give the same adversarials in any
            order, process or worker (what `evaluate` needs to resume a run or
            split it over workers).
        Other arguments as in `ifgsm`; default `steps=40`.
    """
    _common.check_positive_int("restarts", restarts)
    if y is None:
        y = _common.predicted_labels(model_fn, x)

    def start(r):
        return None if seed is None else _common.seed_pair(seed, r)

    best = _iterate(model_fn, x, y, eps, steps, step_size, clip_min, clip_max, True, False,
                    start(0))
    if restarts == 1 or eps == 0:
        return best
    best_loss = _cross_entropy(model_fn, best, y)
    for r in range(1, restarts):
        cand = _iterate(model_fn, x, y, eps, steps, step_size, clip_min, clip_max, True, False,
                        start(r))
        cand_loss = _cross_entropy(model_fn, cand, y)
        better = cand_loss > best_loss
        mask = tf.reshape(better, [-1] + [1] * (len(x.shape) - 1))
        best = tf.where(mask, cand, best)
        best_loss = tf.where(better, cand_loss, best_loss)
    return best


def ill(model_fn, x, y=None, *, eps, steps=10, step_size=None, clip_min=0.0, clip_max=1.0):
    """Iterative least-likely-class attack (I-LL): I-FGSM targeted at `argmin f(x)`.

    `y` is accepted for a uniform signature and ignored.
    """
    del y
    target = _common.least_likely_class(model_fn(x))
    return _iterate(model_fn, x, target, eps, steps, step_size, clip_min, clip_max, False, True)


def _cross_entropy(model_fn, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))
