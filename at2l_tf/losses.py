"""The triplet loss of AT²L and its in-batch negative selection, as pure functions.

With `f(.)` the logits and `d(a, b) = ||a - b||` (L-inf by default), the
triplet `(anchor, positive, negative) = (f(x_adv_i), f(x_i), f(x_n_i))` gives the
hinge of the paper's Eq. 2:

    h_i = max( d(f(x_adv_i), f(x_i)) - d(f(x_adv_i), f(x_n_i)) + α, 0 )

and the AT²L objective (Eq. 2) over a batch of k examples is

    L = 1/((1+λ1) k) Σ_i [CE(x_i, y_i) + λ1 CE(x_adv_i, y_i)]  +  λ2/k Σ_i h_i.

The negative `x_n_i` is taken from the same batch, so its logits come from the
clean forward pass that Eq. 1 needs anyway (no extra forward pass):

* two classes: any example whose label differs from `y_i`;
* more classes: an example whose label is the class `x_adv_i` is pushed to,
  `t_i = argmax_{c != y_i} f(x_adv_i)_c`; if the batch holds none, any example
  with a different label.

Among the candidates one is drawn uniformly at random (seeded). An example
with no candidate at all (every label in the batch equal to its own) gets
`h_i = 0` and is flagged invalid; it still counts in the `1/k` of the mean.
"""

import keras
import tensorflow as tf

NORMS = ("linf", "l2", "l1")


def logit_distance(a, b, norm="linf"):
    """Row-wise distance `||a - b||` over the last axis.

    Args:
        a, b: tensors `(k, C)`.
        norm: `"linf"` (the paper's choice), `"l2"` or `"l1"`.

    Returns:
        A `(k,)` tensor.
    """
    diff = a - b
    if norm == "linf":
        return tf.reduce_max(tf.abs(diff), axis=-1)
    if norm == "l2":
        # The epsilon keeps the gradient finite when a == b (sqrt'(0) = inf).
        return tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1) + 1e-12)
    if norm == "l1":
        return tf.reduce_sum(tf.abs(diff), axis=-1)
    raise ValueError(f"norm must be one of {NORMS}, received norm={norm!r}")


def triplet_hinge(anchor, positive, negative, *, margin, norm="linf"):
    """Per-triplet hinge `max(d(anchor, positive) - d(anchor, negative) + margin, 0)`.

    Args:
        anchor: logits of the adversarial examples, `(k, C)`.
        positive: logits of their clean examples, `(k, C)`.
        negative: logits of the selected negatives, `(k, C)`.
        margin: the margin α (>= 0).
        norm: distance, see `logit_distance`.

    Returns:
        A `(k,)` tensor of hinge values.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, received margin={margin}")
    d_pos = logit_distance(anchor, positive, norm)
    d_neg = logit_distance(anchor, negative, norm)
    return tf.nn.relu(d_pos - d_neg + margin)


def select_negatives(labels, adv_logits, *, num_classes, seed=None):
    """Chooses, for each example, the in-batch index of its negative.

    Args:
        labels: int labels `(k,)`.
        adv_logits: logits of the adversarial examples `(k, C)`; for more than
            two classes they decide the class each example is pushed to.
        num_classes: number of classes C.
        seed: an int or a `keras.random.SeedGenerator` for the random choice
            among candidates (a SeedGenerator gives new draws every step).

    Returns:
        `(index, valid)`: int32 `(k,)` indices into the batch, and a bool
        `(k,)` mask, False where the batch holds no example of another label.
    """
    labels = tf.cast(labels, tf.int32)
    k = tf.shape(labels)[0]
    different = tf.not_equal(labels[:, None], labels[None, :])  # [i, j]: y_j != y_i
    if num_classes > 2:
        true_mask = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
        lowest = tf.fill(tf.shape(adv_logits), tf.constant(-float("inf"), adv_logits.dtype))
        pushed_to = tf.argmax(tf.where(true_mask, lowest, adv_logits), axis=-1, output_type=tf.int32)
        of_target = tf.equal(labels[None, :], pushed_to[:, None])  # [i, j]: y_j == t_i
        has_target = tf.reduce_any(of_target, axis=1, keepdims=True)
        candidates = tf.where(has_target, of_target, different)
    else:
        candidates = different
    scores = keras.random.uniform((k, k), seed=seed)
    scores = tf.where(candidates, scores, -tf.ones_like(scores))
    index = tf.argmax(scores, axis=1, output_type=tf.int32)
    valid = tf.reduce_any(candidates, axis=1)
    return index, valid


def triplet_term(labels, clean_logits, adv_logits, *, margin, num_classes, norm="linf", seed=None):
    """Per-example triplet hinge `h_i` of Eq. 2 with in-batch negatives.

    The negative logits are gathered from `clean_logits`: no extra forward pass.

    Args:
        labels: int labels `(k,)`.
        clean_logits: `f(x)`, `(k, C)`: positives, and the pool of negatives.
        adv_logits: `f(x_adv)`, `(k, C)`: anchors.
        margin, norm: see `triplet_hinge`.
        num_classes, seed: see `select_negatives`.

    Returns:
        A `(k,)` tensor, zero for examples without a valid negative.
    """
    index, valid = select_negatives(labels, adv_logits, num_classes=num_classes, seed=seed)
    negative = tf.gather(clean_logits, index)
    hinge = triplet_hinge(adv_logits, clean_logits, negative, margin=margin, norm=norm)
    return tf.where(valid, hinge, tf.zeros_like(hinge))
