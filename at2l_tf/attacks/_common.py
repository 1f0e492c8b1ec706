"""Maths shared by the attacks, written once: argument checks, the L-inf
projection, the random start and the least-likely class."""

import numbers

import tensorflow as tf
from cleverhans.tf2.utils import clip_eta

from at2l_tf.attacks import search


def check_nonnegative(name, value):
    """Raises `ValueError` unless the Python number `value` is >= 0."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, received {name}={value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, received {name}={value}")


def check_positive_int(name, value):
    if not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, received {name}={value!r}")


def check_box(clip_min, clip_max):
    if clip_min >= clip_max:
        raise ValueError(
            f"clip_min must be < clip_max, received clip_min={clip_min}, clip_max={clip_max}"
        )


def project_linf(x_adv, x, eps, clip_min, clip_max):
    """Projects `x_adv` onto {z : ||z - x||_inf <= eps} ∩ [clip_min, clip_max]^d."""
    eta = clip_eta(x_adv - x, float("inf"), eps)
    return tf.clip_by_value(x + eta, clip_min, clip_max)


def seed_pair(seed, stream=0):
    """The `[seed, stream]` int64 pair of a stateless random op (`seed` an int or int tensor)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(stream, tf.int64)])


def random_start(x, eps, clip_min, clip_max, seed=None):
    """`x + U(-eps, eps)`, clipped to the box: the random start of FGSM-RS.

    `seed=None` draws from TensorFlow's global generator; an int (or int
    tensor) draws statelessly, so that the start depends on `seed` and the
    shape of `x` only.
    """
    if seed is None:
        noise = tf.random.uniform(tf.shape(x), -eps, eps, dtype=x.dtype)
    else:
        noise = tf.random.stateless_uniform(
            tf.shape(x), seed=seed_pair(seed), minval=-eps, maxval=eps, dtype=x.dtype
        )
    return tf.clip_by_value(x + noise, clip_min, clip_max)


def least_likely_class(logits):
    """Index of the smallest logit per example: the target of LL / I-LL."""
    return tf.argmin(logits, axis=-1)


def predicted_labels(model_fn, x):
    """Model predictions, used as labels when `y` is not given (avoids label leaking);
    the float32 judge's for a `search.SearchModel`."""
    return tf.argmax(search.judge_of(model_fn)(x), axis=-1)


def run_graph_attack(attack_body, model_fn, x, y, params):
    """Runs an attack written as TensorFlow loops (C&W, DeepFool).

    Fills `y` with the model's predictions when it is `None`. Called eagerly,
    it goes through one `tf.function` (its while loops would otherwise run op by
    op in Python), traced once per `attack_body`, `model_fn` (held weakly by
    tf.function) and parameter set, whatever the batch size; inside a traced
    function it just calls `attack_body`.
    """
    x = tf.convert_to_tensor(x)
    if y is None:
        y = predicted_labels(model_fn, x)
    y = tf.convert_to_tensor(y)
    if tf.executing_eagerly():
        return _run_compiled(attack_body, model_fn, x, y, params)
    return attack_body(model_fn, x, y, **params)


@tf.function(reduce_retracing=True)
def _run_compiled(attack_body, model_fn, x, y, params):
    return attack_body(model_fn, x, y, **params)


def gaussian_start(x, sigma, seed=None):
    """`x + sigma·N(0, 1)`: the start of TRADES' KL attack (sigma = 0.001).

    Not clipped: the first step's projection brings it back into the ball and
    the box, as in the authors' code.
    """
    return x + sigma * tf.random.normal(tf.shape(x), dtype=x.dtype, seed=seed)
