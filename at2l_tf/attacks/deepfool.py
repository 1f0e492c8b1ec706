"""Multi-class DeepFool, L2 (Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a
simple and accurate method to fool deep neural networks", CVPR 2016, Algorithm 2).

DeepFool linearises the classifier around the current iterate and steps to
the nearest linearised decision boundary. With `f_k` the logit of class `k`,
`y` the class to leave and `C` the candidate classes (the `num_candidates - 1`
classes other than `y` with the highest clean logits), at iterate `x_t`:

    w_k   = ∇f_k(x_t) - ∇f_y(x_t),     f'_k = f_k(x_t) - f_y(x_t)      for k in C
    l     = argmin_{k in C} |f'_k| / ||w_k||_2                          (Alg. 2, line 8)
    r_t   = (|f'_l| + 1e-4) / ||w_l||_2^2 * w_l                         (Alg. 2, line 9)
    r_tot = r_0 + ... + r_t
    x_t+1 = clip(x + (1 + overshoot) * r_tot, clip_min, clip_max)

(the 1e-4 pushes the linearised step just past the boundary, as in the
authors' code). An example stops as soon as `argmax f(x_t) != y`, or after
`max_iter` steps; the result is `x_adv = clip(x + (1 + overshoot) * r_tot)`.
The overshoot is applied to the iterate the model sees, so the stopping test
is made on the point that is returned. DeepFool is a minimal-perturbation
attack, not an eps-bounded one: it has no `eps`, and an example it does not
fool within `max_iter` steps (or fooled only outside the box) is returned
with the perturbation reached so far.

Batched and graph-safe: one `tf.while_loop` that runs until every example is
misclassified or `max_iter` is reached, finished examples carrying a zero
step; the `|C|` gradients of one step come from a single forward pass and
`GradientTape.batch_jacobian`. Each example's result is independent of the
others in its batch.
"""

import tensorflow as tf

from at2l_tf.attacks import _common

# Keeps the division finite where the gradients of two logits coincide.
_TINY = 1e-12
# Pushes the linearised step past the boundary (Moosavi-Dezfooli et al.'s code).
_STEP_MARGIN = 1e-4


def deepfool(
    model_fn,
    x,
    y=None,
    *,
    num_candidates=10,
    overshoot=0.02,
    max_iter=50,
    clip_min=0.0,
    clip_max=1.0,
):
    """Multi-class DeepFool (L2).

    Args:
        model_fn: callable mapping images to logits (call the model with
            `training=False`).
        x: float images `(batch, ...)` inside `[clip_min, clip_max]`.
        y: int labels `(batch,)`, the classes to leave; default the model's
            predictions (the paper's setting). Examples the model already
            misclassifies are returned unchanged.
        num_candidates: number of classes considered, `y` included (>= 2;
            capped at the number of classes): `y` and the `num_candidates - 1`
            other classes of highest clean logit. Default 10 (all of MNIST's
            and CIFAR-10's classes).
        overshoot: relative overshoot of the total perturbation (>= 0),
            default 0.02 as in the paper.
        max_iter: maximum number of linearisation steps (>= 1), default 50.
        clip_min, clip_max: the valid pixel box.

    Called eagerly, the attack runs as a `tf.function` traced once per
    `model_fn` and parameter set; inside a `tf.function` it becomes part of
    that graph.

    Returns:
        `x_adv = clip(x + (1 + overshoot) * r_tot)`, same shape and dtype as `x`.

    Raises:
        ValueError: on a bad argument.
    """
    _common.check_positive_int("num_candidates", num_candidates)
    if num_candidates < 2:
        raise ValueError(
            f"num_candidates must be >= 2 (the label and one other class), "
            f"received num_candidates={num_candidates}"
        )
    _common.check_nonnegative("overshoot", overshoot)
    _common.check_positive_int("max_iter", max_iter)
    _common.check_box(clip_min, clip_max)

    params = dict(
        num_candidates=int(num_candidates),
        overshoot=float(overshoot),
        max_iter=int(max_iter),
        clip_min=float(clip_min),
        clip_max=float(clip_max),
    )
    return _common.run_graph_attack(_attack, model_fn, x, y, params)


def _attack(model_fn, x, y, *, num_candidates, overshoot, max_iter, clip_min, clip_max):
    """DeepFool as TensorFlow ops, for a traced call."""
    y = tf.cast(y, tf.int32)
    pixel_axes = list(range(2, x.shape.rank + 1))  # axes of a (batch, class, ...) Jacobian
    clean_logits = model_fn(x)
    num_classes = clean_logits.shape[-1]
    k = min(num_candidates, num_classes) - 1
    is_label = tf.one_hot(y, num_classes, on_value=True, off_value=False)
    # The other classes, most likely first; fixed at the clean input, as in the paper.
    others = tf.math.top_k(tf.where(is_label, -float("inf"), clean_logits), k=k).indices

    def perturbed(r_tot):
        return tf.clip_by_value(x + (1.0 + overshoot) * r_tot, clip_min, clip_max)

    def cond(step, r_tot, active):
        return tf.logical_and(step < max_iter, tf.reduce_any(active))

    def body(step, r_tot, active):
        x_t = perturbed(r_tot)
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            logits = model_fn(x_t)
            label_logit = tf.gather(logits, y, batch_dims=1)
            f_diff = tf.gather(logits, others, batch_dims=1) - label_logit[:, None]  # (b, k)
        w = tape.batch_jacobian(f_diff, x_t)  # (b, k, ...)
        active = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)

        w_norm = tf.sqrt(tf.reduce_sum(tf.square(w), axis=pixel_axes) + _TINY)  # (b, k)
        nearest = tf.argmin(tf.abs(f_diff) / w_norm, axis=-1, output_type=tf.int32)
        w_l = tf.gather(w, nearest, batch_dims=1)  # (b, ...)
        f_l = tf.gather(f_diff, nearest, batch_dims=1)
        w_l_norm = tf.gather(w_norm, nearest, batch_dims=1)
        scale = (tf.abs(f_l) + _STEP_MARGIN) / tf.square(w_l_norm)
        scale = tf.where(active, scale, tf.zeros_like(scale))  # finished examples stay put
        r_tot = r_tot + tf.reshape(scale, [-1] + [1] * (x.shape.rank - 1)) * w_l
        return step + 1, r_tot, active

    # The first body call tests the clean input, so an example the model
    # already misclassifies never moves.
    state = (tf.constant(0), tf.zeros_like(x), tf.ones_like(y, dtype=tf.bool))
    _, r_tot, _ = tf.while_loop(cond, body, state)
    return perturbed(r_tot)
