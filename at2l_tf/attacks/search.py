"""A search model for attacks: search in reduced precision, judge in float32.

An attack is a search; its answer is the adversarial example. The search (the
forward and backward passes that pick the next candidate) can run on a
bfloat16 copy of the classifier, as long as every *verdict* — is this
candidate misclassified? is it better than the best so far? — is the float32
model's. `SearchModel(search_fn, judge_fn)` is what the attacks then take as
`model_fn`: calling it runs `search_fn` (logits cast to float32), and the
attacks that decide something per candidate ask `judge_fn` through this
module's helpers:

* APGD (`attacks.apgd`): an iterate counts as fooled, and becomes the returned
  point, only if the float32 model misclassifies it; the examples left for
  restarts and targets are those the float32 model still classifies correctly.
* Square (`attacks.square`): the margins that decide which candidate it keeps
  are float32 margins (see its module docstring), so bfloat16 rounding cannot
  make it keep a worse point, nor stop on a point that fools only the copy.
* AutoAttack: what each stage leaves to the next is the float32 verdict of
  its stage.

Attacks without per-candidate decisions (FGSM, PGD, ...) just run on the
search model; the robustness report judges every returned example on the
float32 model anyway. A plain function (no `judge`) is its own judge: with
float32 nothing changes.

`SearchModel.rejected` counts, in a `tf.Variable` (so graph-compiled attacks
can count too), the candidates that fooled the search model but not the
float32 model: the report records it per attack and AutoAttack stage.
"""

import tensorflow as tf


class SearchModel:
    """`model_fn` for attacks: `search_fn` for forward/backward passes, `judge_fn` for verdicts.

    Args:
        search_fn: images -> logits, e.g. a bfloat16 copy of the classifier
            (an adaptive wrapper of it: BPDA, EOT).
        judge_fn: images -> logits in float32, the same function in float32.
        name: what the search runs in, for messages (`"bfloat16"`).
    """

    def __init__(self, search_fn, judge_fn, name="bfloat16"):
        self.search_fn = search_fn
        self.judge = judge_fn
        self.name = name
        self.rejected = tf.Variable(0, dtype=tf.int64, trainable=False, name="rejected_candidates")

    def __call__(self, x):
        return tf.cast(self.search_fn(x), tf.float32)

    def take_rejected(self):
        """The rejections counted since the last call (a Python int), and resets the count."""
        n = int(self.rejected.numpy())
        self.rejected.assign(0)
        return n


def judge_of(model_fn):
    """The float32 judge of `model_fn` (itself when it is not a `SearchModel`)."""
    return getattr(model_fn, "judge", model_fn)


def is_search(model_fn):
    return isinstance(model_fn, SearchModel)


def judge_logits(model_fn, x):
    """The float32 logits of `x` by `model_fn`'s judge."""
    return tf.cast(judge_of(model_fn)(x), tf.float32)


def confirm_wrong(model_fn, x, y, wrong):
    """The float32 verdict on the candidates `x` that the search found misclassified.

    Args:
        model_fn: the attack's model (a `SearchModel`, or a plain function,
            for which `wrong` is returned as it is).
        x: candidates `(batch, ...)`.
        y: labels `(batch,)`.
        wrong: bool `(batch,)`, the search model's verdict; only these
            candidates are judged (a forward pass of the float32 model on
            them alone), and none when there are none.

    Returns:
        bool `(batch,)`: `wrong` and misclassified by the float32 model. The
        candidates of `wrong` the float32 model classifies correctly are added
        to `model_fn.rejected`.
    """
    if not is_search(model_fn):
        return wrong
    y = tf.cast(y, tf.int64)

    def judged():
        idx = tf.where(wrong)
        logits = judge_logits(model_fn, tf.gather_nd(x, idx))
        really = tf.not_equal(tf.argmax(logits, axis=-1), tf.gather_nd(y, idx))
        model_fn.rejected.assign_add(tf.reduce_sum(tf.cast(~really, tf.int64)))
        return tf.tensor_scatter_nd_update(tf.zeros_like(wrong), idx, really)

    return tf.cond(tf.reduce_any(wrong), judged, lambda: tf.zeros_like(wrong))


def judged_wrong(model_fn, x, y):
    """Per example, misclassified by the float32 judge (one forward pass)."""
    return tf.not_equal(tf.argmax(judge_logits(model_fn, x), axis=-1), tf.cast(y, tf.int64))
