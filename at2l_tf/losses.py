"""The losses of the training objectives, as pure functions: the triplet loss of
AT²L with its in-batch negative selection, and the KL and boosted CE of TRADES / MART.

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

The design space beyond the paper (`triplet_term`'s arguments; the paper's
choices are the defaults):

* features: the logits (paper) or any other per-example features, e.g. the
  penultimate layer's output (TLA, Mao et al. 2019), passed in by the caller;
* distance (`DISTANCES`): `linf` (paper), `l2`, `l1`, or `cosine`: `1 - cos(a, b)`,
  i.e. a distance between L2-normalized features (TLA), blind to their scale;
* negative (`NEGATIVES`): `random` (paper, above) or `hardest` (TLA): the clean
  example of another label that is *closest* to the anchor under the distance.
"""

import keras
import tensorflow as tf

# Distances of the triplet term (`--triplet_distance`).
DISTANCES = ("linf", "l2", "l1", "cosine")
NEGATIVES = ("random", "hardest")


def logit_distance(a, b, distance="linf"):
    """Row-wise distance `d(a, b)` over the last axis.

    Args:
        a, b: tensors `(k, D)` (logits or other features).
        distance: `"linf"` (the paper's choice), `"l2"`, `"l1"`, or `"cosine"`
            (`1 - <a/||a||, b/||b||>`, in [0, 2]; unchanged when a row is scaled).

    Returns:
        A `(k,)` tensor.
    """
    if distance == "cosine":
        return 1.0 - tf.reduce_sum(_unit(a) * _unit(b), axis=-1)
    diff = a - b
    if distance == "linf":
        return tf.reduce_max(tf.abs(diff), axis=-1)
    if distance == "l2":
        # The epsilon keeps the gradient finite when a == b (sqrt'(0) = inf).
        return tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1) + 1e-12)
    if distance == "l1":
        return tf.reduce_sum(tf.abs(diff), axis=-1)
    raise ValueError(f"distance must be one of {DISTANCES}, received distance={distance!r}")


def pairwise_distance(a, b, distance="linf"):
    """All distances `d(a_i, b_j)`: a `(k, m)` tensor for `a` `(k, D)` and `b` `(m, D)`.

    Used to find the hardest negatives; L∞ and L1 broadcast to `(k, m, D)` (a
    few MB for a batch of 128 and D = 128), L2 and cosine go through a matmul.
    """
    if distance == "cosine":
        return 1.0 - tf.matmul(_unit(a), _unit(b), transpose_b=True)
    if distance == "l2":
        sq = (
            tf.reduce_sum(tf.square(a), -1)[:, None]
            + tf.reduce_sum(tf.square(b), -1)[None, :]
            - 2.0 * tf.matmul(a, b, transpose_b=True)
        )
        return tf.sqrt(tf.maximum(sq, 0.0) + 1e-12)
    if distance in ("linf", "l1"):
        diff = tf.abs(a[:, None, :] - b[None, :, :])
        return tf.reduce_max(diff, -1) if distance == "linf" else tf.reduce_sum(diff, -1)
    raise ValueError(f"distance must be one of {DISTANCES}, received distance={distance!r}")


def _unit(v):
    return tf.math.l2_normalize(v, axis=-1, epsilon=1e-12)


def triplet_hinge(anchor, positive, negative, *, margin, distance="linf"):
    """Per-triplet hinge `max(d(anchor, positive) - d(anchor, negative) + margin, 0)`.

    Args:
        anchor: features (logits) of the adversarial examples, `(k, D)`.
        positive: features of their clean examples, `(k, D)`.
        negative: features of the selected negatives, `(k, D)`.
        margin: the margin α (>= 0).
        distance: see `logit_distance`.

    Returns:
        A `(k,)` tensor of hinge values.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, received margin={margin}")
    d_pos = logit_distance(anchor, positive, distance)
    d_neg = logit_distance(anchor, negative, distance)
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


def hardest_negatives(labels, anchors, clean, *, distance="linf"):
    """For each anchor, the in-batch index of the closest clean example of another label (TLA).

    Args:
        labels: int labels `(k,)`.
        anchors: features of the adversarial examples `(k, D)`.
        clean: features of the clean examples `(k, D)`, the pool of negatives.
        distance: the distance (`DISTANCES`) under which "closest" is meant.

    Returns:
        `(index, valid)` as `select_negatives`. The choice is not differentiated
        (an argmin); the hinge is, through the gathered features.
    """
    labels = tf.cast(labels, tf.int32)
    different = tf.not_equal(labels[:, None], labels[None, :])
    dist = pairwise_distance(tf.stop_gradient(anchors), tf.stop_gradient(clean), distance)
    dist = tf.where(different, dist, tf.fill(tf.shape(dist), tf.constant(float("inf"), dist.dtype)))
    index = tf.argmin(dist, axis=1, output_type=tf.int32)
    return index, tf.reduce_any(different, axis=1)


def triplet_term(
    labels,
    clean_logits,
    adv_logits,
    *,
    margin,
    num_classes,
    distance="linf",
    seed=None,
    negative="random",
    clean_features=None,
    adv_features=None,
):
    """Per-example triplet hinge `h_i` of Eq. 2 with in-batch negatives.

    The negatives' features are gathered from the clean ones: no extra forward pass.

    Args:
        labels: int labels `(k,)`.
        clean_logits: `f(x)`, `(k, C)`.
        adv_logits: `f(x_adv)`, `(k, C)`: they decide the class each example is
            pushed to (`random` negatives).
        margin, distance: see `triplet_hinge`.
        num_classes, seed: see `select_negatives`.
        negative: `random` (the paper's, `select_negatives`) or `hardest`
            (`hardest_negatives`).
        clean_features, adv_features: `(k, D)` features of the triplet when not
            the logits (e.g. the penultimate layer's output); default the logits.

    Returns:
        A `(k,)` tensor, zero for examples without a valid negative.
    """
    clean = clean_logits if clean_features is None else clean_features
    anchors = adv_logits if adv_features is None else adv_features
    if negative == "random":
        index, valid = select_negatives(labels, adv_logits, num_classes=num_classes, seed=seed)
    elif negative == "hardest":
        index, valid = hardest_negatives(labels, anchors, clean, distance=distance)
    else:
        raise ValueError(f"negative must be one of {NEGATIVES}, received negative={negative!r}")
    hinge = triplet_hinge(anchors, clean, tf.gather(clean, index), margin=margin, distance=distance)
    return tf.where(valid, hinge, tf.zeros_like(hinge))


# ---------------------------------------------------------------- TRADES / MART


def cross_entropy(labels, logits):
    """Per-example `CE(f(x), y) = -log softmax(f(x))_y`, `(k,)`, in float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def kl_divergence(p_logits, q_logits):
    """Per-example `KL(softmax(p) || softmax(q)) = Σ_c p_c (log p_c - log q_c)`, `(k,)`.

    TRADES' and MART's robust term with `p = f(x)` (clean) and `q = f(x')`
    (adversarial). Computed from log-softmaxes (no log(0)), in float32.
    """
    log_p = tf.nn.log_softmax(tf.cast(p_logits, tf.float32), axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(q_logits, tf.float32), axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def boosted_cross_entropy(labels, logits):
    """MART's BCE, `-log p_y - log(1 - max_{k≠y} p_k)` with `p = softmax(f(x'))`, `(k,)`.

    `log(1 - p_m)` is computed exactly as `logsumexp_{c≠m} z_c - logsumexp_c z_c`
    (the authors' code uses `log(1.0001 - p_m + 1e-12)`).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    num_classes = tf.shape(logits)[-1]
    lowest = tf.fill(tf.shape(logits), tf.constant(-float("inf"), logits.dtype))
    true_mask = tf.cast(tf.one_hot(labels, num_classes), tf.bool)
    other = tf.argmax(tf.where(true_mask, lowest, logits), axis=-1, output_type=tf.int32)
    without_other = tf.where(tf.cast(tf.one_hot(other, num_classes), tf.bool), lowest, logits)
    log_one_minus = tf.reduce_logsumexp(without_other, -1) - tf.reduce_logsumexp(logits, -1)
    return cross_entropy(labels, logits) - log_one_minus
