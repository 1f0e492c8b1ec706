"""AutoAttack, L-inf (Croce & Hein, ICML 2020): a parameter-free ensemble, run in sequence.

* `standard`: APGD-CE (100 iterations) → APGD-T (targeted DLR, 9 targets × 100
  iterations) → Square (5,000 queries, p_init 0.8), each run only on the
  examples every earlier attack left correctly classified. This is AutoAttack's
  standard L-inf version without FAB-T, which in the authors' published runs
  rarely fools a point that APGD-T left robust.
* `fast`: APGD-CE → APGD-T, for checks during or right after training.

Per example, the first adversarial found is returned (so accuracy on the output
is the worst case over the attacks run); examples no attack fooled get their
last attack's output. With fewer than 4 classes APGD-T is replaced by
untargeted APGD-DLR (3 classes) or dropped (2 classes), as the targeted DLR
loss needs a 4th-largest logit.

The sequence runs eagerly and hands each attack only the still-robust subset,
so each attack costs in proportion to what is left to attack.
"""

import tensorflow as tf

from at2l_tf.attacks import _common, apgd
from at2l_tf.attacks.square import square as square_attack

VERSIONS = ("standard", "fast")


def autoattack_stages(version, num_classes):
    """The attacks of `version` for a `num_classes` classifier, in order of use."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, received version={version!r}")
    stages = ["apgd_ce"]
    if num_classes >= 4:
        stages.append("apgd_t")
    elif num_classes == 3:
        stages.append("apgd_dlr")
    if version == "standard":
        stages.append("square")
    return stages


def autoattack(model_fn, x, y=None, *, eps, version="standard", steps=100, queries=5000,
               clip_min=0.0, clip_max=1.0, seed=0):
    """Runs AutoAttack (L-inf) and returns the per-example worst case.

    Args:
        model_fn: callable mapping images to logits.
        x: images `(batch, ...)` in `[clip_min, clip_max]`.
        y: int labels; default the model's predictions.
        eps: L-inf radius (>= 0).
        version: `standard` (APGD-CE, APGD-T, Square) or `fast` (APGD-CE, APGD-T).
        steps: APGD iterations per run (100).
        queries: Square's query budget per example (5,000).
        clip_min, clip_max: the valid pixel box.
        seed: seed of every attack's randomness.

    Returns:
        `x_adv` with `||x_adv − x||_∞ <= eps`, inside the box.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("steps", steps)
    _common.check_positive_int("queries", queries)
    x = tf.convert_to_tensor(x)
    logits = model_fn(x)
    stages = autoattack_stages(version, logits.shape[-1])
    y = tf.argmax(logits, axis=-1) if y is None else tf.cast(tf.convert_to_tensor(y), tf.int64)
    if eps == 0:
        return x
    common = dict(eps=eps, clip_min=clip_min, clip_max=clip_max, seed=seed)
    runs = {
        "apgd_ce": lambda xs, ys: apgd.apgd_ce(model_fn, xs, ys, steps=steps, **common),
        "apgd_t": lambda xs, ys: apgd.apgd_t(model_fn, xs, ys, steps=steps, **common),
        "apgd_dlr": lambda xs, ys: apgd.apgd_dlr(model_fn, xs, ys, steps=steps, **common),
        "square": lambda xs, ys: square_attack(model_fn, xs, ys, queries=queries, **common),
    }
    x_out = x
    robust = tf.equal(tf.argmax(logits, axis=-1), y)
    for stage in stages:
        todo = tf.where(robust)[:, 0]
        if int(tf.size(todo)) == 0:
            break
        adv = runs[stage](tf.gather(x, todo), tf.gather(y, todo))
        still = tf.equal(tf.argmax(model_fn(adv), axis=-1), tf.gather(y, todo))
        idx = todo[:, None]
        x_out = tf.tensor_scatter_nd_update(x_out, idx, adv)
        robust = tf.tensor_scatter_nd_update(robust, idx, still)
    return x_out
