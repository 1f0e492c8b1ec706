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
so each attack costs in proportion to what is left to attack. Which examples a
stage fooled comes from the stage's own forward passes (`apgd.run_apgd`,
`square.run_square`): no extra forward pass per stage. The authors' code checks
each stage's output with one more forward pass; the two agree unless a logit tie
is decided differently in another batch composition, and the robustness report
judges every output on the target model anyway.

With a reduced-precision search (`attacks.search.SearchModel`, `evaluate
--attack_precision=bfloat16`) the stages search on the bfloat16 copy, and what
each leaves to the next is the float32 verdict: the clean check is the float32
model's, and APGD and Square count a candidate as fooling only when the float32
model misclassifies it. `on_stage` then also receives `rejected=`, the number
of the stage's candidates that fooled the copy but not the float32 model.
"""

import time

import tensorflow as tf

from at2l_tf.attacks import _common, apgd, search
from at2l_tf.attacks.square import run_square

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
               clip_min=0.0, clip_max=1.0, seed=0, on_stage=None):
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
        on_stage: optional `on_stage(stage, attacked, robust, seconds)`, called
            after each stage with its name, the number of examples it attacked,
            the number still robust after it and its time (progress reports,
            per-stage times). A stage with nothing left to attack is skipped
            and not reported. With a `search.SearchModel`, also `rejected=`
            (see the module docstring).

    Returns:
        `x_adv` with `||x_adv − x||_∞ <= eps`, inside the box.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("steps", steps)
    _common.check_positive_int("queries", queries)
    x = tf.convert_to_tensor(x)
    logits = model_fn(x)
    stages = autoattack_stages(version, logits.shape[-1])
    mixed = search.is_search(model_fn)
    if mixed:  # The clean verdict (and the default labels) are the float32 model's.
        logits = search.judge_logits(model_fn, x)
    y = tf.argmax(logits, axis=-1) if y is None else tf.cast(tf.convert_to_tensor(y), tf.int64)
    if eps == 0:
        return x
    common = dict(eps=eps, clip_min=clip_min, clip_max=clip_max, seed=seed)
    # Each stage returns `(x_adv, fooled)`: which examples it fooled comes from
    # its own forward passes, so no stage needs another one.
    runs = {
        "apgd_ce": lambda xs, ys: apgd.run_apgd(model_fn, xs, ys, loss="ce", steps=steps, **common),
        "apgd_t": lambda xs, ys: apgd.run_apgd(
            model_fn, xs, ys, loss="dlr-targeted", steps=steps, **common),
        "apgd_dlr": lambda xs, ys: apgd.run_apgd(model_fn, xs, ys, loss="dlr", steps=steps, **common),
        "square": lambda xs, ys: run_square(model_fn, xs, ys, queries=queries, **common),
    }
    x_out = x
    robust = tf.equal(tf.argmax(logits, axis=-1), y)
    for stage in stages:
        todo = tf.where(robust)[:, 0]
        attacked = int(tf.size(todo))
        if attacked == 0:
            break
        start = time.perf_counter()
        if mixed:
            model_fn.take_rejected()
        adv, fooled = runs[stage](tf.gather(x, todo), tf.gather(y, todo))
        idx = todo[:, None]
        x_out = tf.tensor_scatter_nd_update(x_out, idx, adv)
        robust = tf.tensor_scatter_nd_update(robust, idx, ~fooled)
        if on_stage is not None:
            left = int(tf.reduce_sum(tf.cast(robust, tf.int32)))
            seconds = time.perf_counter() - start
            if mixed:
                on_stage(stage, attacked, left, seconds, rejected=model_fn.take_rejected())
            else:
                on_stage(stage, attacked, left, seconds)
    return x_out
