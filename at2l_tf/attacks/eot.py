"""Expectation over Transformation, EOT (Athalye, Engstrom, Ilyas, Kwok, ICML 2018;
Athalye, Carlini, Wagner, ICML 2018, Section 4.3).

A randomized defence `f(t(x))`, `t ~ T` (e.g. `RandomResizePad`), gives a
different gradient on every call; one sample is a noisy direction, and an attack
that follows it underestimates the defence's weakness. EOT attacks the
expectation instead. Here the wrapped model returns the mean logits over `n`
independent draws,

    f̄(x) = 1/n Σ_{i=1..n} f(t_i(x)),      t_i ~ T,

and any gradient attack of `at2l_tf.attacks` (PGD, APGD, ...) runs on `f̄`; the
gradient flows through every draw.

How this relates to Athalye et al.: they average the *loss* gradient,
`1/n Σ ∇ L(f(t_i(x)), y)` (the gradient of `E_t L`); we average the *logits* and
differentiate `L(f̄(x), y)`. Both are Monte-Carlo estimates of a smoothed model's
gradient and agree to first order when the draws' logits are close; averaging
logits lets every attack, its loss (CE, DLR) and its success checks run
unchanged on one deterministic-looking model, and the attack's "fooled" test is
then on the averaged logits, a stronger requirement than fooling one draw. A
robustness figure is still measured on the real randomized model (fresh single
draws) at the attack's output.
"""

import tensorflow as tf

from at2l_tf.attacks import _common


def eot_model_fn(model_fn, draws=20, *, batch_draws=True):
    """Wraps a randomized `model_fn` into the mean of its logits over `draws` draws.

    Args:
        model_fn: callable mapping images to logits, random on every call (call
            the model with `training=False`: the defence must stay random).
        draws: number of random draws `n` (>= 1, default 20; Athalye et al. used 30).
        batch_draws: if True (default), the batch is tiled `draws` times and
            evaluated in one call — fast, and right when the randomness is drawn
            per example (as `RandomResizePad` does). If False, `model_fn` is
            called `draws` times in a `tf.while_loop` (for defences that draw
            once per batch, or to save memory).

    Returns:
        `fn(x)`: the mean logits `(batch, classes)` over the draws,
        differentiable through every draw.
    """
    _common.check_positive_int("draws", draws)

    def tiled(x):
        batch = tf.shape(x)[0]
        logits = model_fn(tf.concat([x] * draws, axis=0))
        logits = tf.reshape(logits, tf.concat([[draws, batch], tf.shape(logits)[1:]], axis=0))
        return tf.reduce_mean(logits, axis=0)

    def looped(x):
        first = model_fn(x)

        def body(i, total):
            return i + 1, total + model_fn(x)

        _, total = tf.while_loop(
            lambda i, total: i < draws, body, (tf.constant(1), first),
            maximum_iterations=draws - 1,
        )
        return total / draws

    def fn(x):
        x = tf.convert_to_tensor(x)
        if draws == 1:
            return model_fn(x)
        return tiled(x) if batch_draws else looped(x)

    return fn
