"""Auto-PGD, L-inf (Croce & Hein, *Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks*, ICML 2020).

PGD with momentum and a step size that adapts itself, so that no step size has
to be tuned per model. With `P` the projection onto the eps ball ∩ box and `η`
the step size (one per example):

    z_{k+1} = P(x_k + η_k · sign(∇ L(x_k)))
    x_{k+1} = P(x_k + α (z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1}))        α = 0.75 (1 at k = 0)

from a random start in the ball, with `η_0 = 2·eps`. At checkpoints
`w_j = ⌈p_j N⌉` (`p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`)
an example halves its `η` and restarts from its best point so far if

1. its loss rose in fewer than `ρ·(w_j − w_{j−1})` of the interval's steps
   (ρ = 0.75), or
2. its `η` was not halved at the previous checkpoint and its best loss has not
   improved since.

Losses (`z` the logits, `π` the classes sorted by decreasing logit):

* CE: the cross-entropy of the true class;
* DLR: `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`, invariant to shifting
  and scaling the logits (needs ≥ 3 classes);
* targeted DLR: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`, run once per
  target `t` among the top `target_classes` other classes of the clean logits
  (needs ≥ 4 classes).

Every iterate is checked: an example counts as fooled as soon as any iterate is
misclassified, and the returned point is that iterate; examples never fooled get
their highest-loss point. Restarts (and targets) run only on the examples not
yet fooled.

Where the authors' code (fra31/auto-attack, `autopgd_base.py`) and the paper
differ, this follows the paper: condition 1 is a strict `<` (the code uses
`≤`), and the first interval's rise count starts from the loss at the random
start (the code compares against an unset zero). Both change nothing in the
schedule and rarely any decision.

Called eagerly (as `evaluate` and AutoAttack call it), a run is a Python loop
over one compiled iteration, and restarts and targets run on the still-robust
subset only; traced inside a `tf.function`, a run is one `tf.while_loop` over
the same iteration, and restarts and targets run on the whole batch and merge
with masks. `run_apgd` also returns which examples were fooled.
"""

import numbers

import numpy as np
import tensorflow as tf

from at2l_tf.attacks import _common, search

MOMENTUM = 0.75
RHO = 0.75


def checkpoints(steps):
    """The iterations after which APGD checks its step size, for `steps` iterations.

    `w_j = ⌈p_j · steps⌉` with `p_0 = 0, p_1 = 0.22`, each next interval 0.03
    shorter than the last, never shorter than 0.06 (in whole iterations, as the
    authors' code: `max(int(0.22 N), 1)`, minus `max(int(0.03 N), 1)`, at least
    `max(int(0.06 N), 1)`). For 100 iterations: 22, 41, 57, 70, 80, 87, 93, 99.

    Returns:
        A list of `(w_j, w_j − w_{j−1})`, iteration counts after which to check
        and the length of the interval that ends there.
    """
    _common.check_positive_int("steps", steps)
    interval = max(int(0.22 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    out, w = [], 0
    while w + interval <= steps:
        w += interval
        out.append((w, interval))
        interval = max(interval - decrease, shortest)
    return out


def _sorted_logits(logits, y, k, what):
    """`(logits, k largest logits, z_y)`; `what` needs `k` classes or more."""
    logits = tf.convert_to_tensor(logits)
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < k:
        raise ValueError(f"the {what} loss needs >= {k} classes, received {num_classes}")
    return logits, tf.math.top_k(logits, k=k).values, tf.gather(logits, y, batch_dims=1)


def dlr_loss(logits, y):
    """Untargeted DLR loss, per example: `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`."""
    logits, top, z_y = _sorted_logits(logits, y, 3, "DLR")
    other = tf.where(tf.equal(tf.argmax(logits, axis=-1), tf.cast(y, tf.int64)), top[:, 1], top[:, 0])
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits, y, target):
    """Targeted DLR loss, per example: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`."""
    logits, top, z_y = _sorted_logits(logits, y, 4, "targeted DLR")
    z_t = tf.gather(logits, target, batch_dims=1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _loss(name, logits, y, target):
    if name == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    if name == "dlr":
        return dlr_loss(logits, y)
    return targeted_dlr_loss(logits, y, target)


def _expand(v, like):
    """Per-example `(batch,)` values shaped to broadcast against `like`."""
    return tf.reshape(v, [-1] + [1] * (len(like.shape) - 1))


def _random_start(x, eps, clip_min, clip_max, seed, run):
    """`x + eps · t / ||t||_∞`, `t ~ U(-1, 1)`, clipped to the box (as the authors)."""
    if seed is None:
        t = tf.random.uniform(tf.shape(x), -1.0, 1.0, dtype=x.dtype)
    else:
        t = tf.random.stateless_uniform(
            tf.shape(x), seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(run, tf.int64)]),
            minval=-1.0, maxval=1.0, dtype=x.dtype,
        )
    scale = tf.reduce_max(tf.abs(tf.reshape(t, [tf.shape(x)[0], -1])), axis=1)
    return tf.clip_by_value(x + eps * t / (_expand(scale, x) + 1e-12), clip_min, clip_max)


def _bounds(x, eps, clip_min, clip_max):
    """Per pixel, the eps ball ∩ the box: projecting onto it is one clip."""
    eps = tf.cast(eps, x.dtype)
    return (tf.maximum(x - eps, tf.cast(clip_min, x.dtype)),
            tf.minimum(x + eps, tf.cast(clip_max, x.dtype)))


def _loss_and_grad(model_fn, z, y, target, loss):
    """`(logits, per-example loss, ∇z of the summed loss)` in one forward and backward pass."""
    with tf.GradientTape() as tape:
        tape.watch(z)
        logits = model_fn(z)
        per_example = _loss(loss, logits, y, target)
        total = tf.reduce_sum(per_example)  # Inside the tape, or it is not recorded.
    return logits, per_example, tape.gradient(total, z)


def _start(model_fn, x, y, target, run, *, loss, eps, steps, rho, clip_min, clip_max, seed):
    """The state of one APGD run at its random start (iteration 0).

    State (per example unless noted): `i` (iterations done, a scalar),
    `x_adv` and `x_old` (the iterate and the one before), `grad` (the loss
    gradient at `x_adv`), `eta` (step size), `x_best`, `grad_best`,
    `loss_best` (the highest-loss point so far), `x_found` and `fooled` (the
    first misclassified iterate), `rises` (iterations of the current
    checkpoint interval whose loss rose), `loss_prev` (the loss at `x_adv`),
    `loss_best_at_check` and `halved_at_check` (the best loss and the
    decision at the last checkpoint).
    """
    del steps, rho
    y = tf.cast(y, tf.int64)
    x_adv = _random_start(x, eps, clip_min, clip_max, seed, run)
    logits, cur_loss, grad = _loss_and_grad(model_fn, x_adv, y, tf.cast(target, tf.int64), loss)
    batch = tf.shape(x)[0]
    wrong = tf.not_equal(tf.argmax(logits, axis=-1), y)
    return dict(
        i=tf.constant(0),
        x_adv=x_adv,
        x_old=x_adv,
        grad=grad,
        eta=tf.fill([batch], tf.cast(2.0 * eps, x.dtype)),
        x_best=x_adv,
        grad_best=grad,
        loss_best=cur_loss,
        x_found=x_adv,
        fooled=search.confirm_wrong(model_fn, x_adv, y, wrong),  # A float32 verdict.
        rises=tf.zeros([batch], x.dtype),
        loss_prev=cur_loss,
        loss_best_at_check=cur_loss,
        # True at the start, so that condition 2 cannot fire at the first checkpoint.
        halved_at_check=tf.ones([batch], tf.bool),
    )


def _step(model_fn, x, y, target, s, *, loss, eps, steps, rho, clip_min, clip_max, seed):
    """One APGD iteration: the state after iteration `s["i"] + 1` (see `_start`)."""
    del seed
    y = tf.cast(y, tf.int64)
    lo, hi = _bounds(x, eps, clip_min, clip_max)
    is_check = np.zeros(steps + 1, np.bool_)
    length = np.ones(steps + 1, np.float32)
    for w, interval in checkpoints(steps):
        is_check[w], length[w] = True, interval
    i = s["i"]
    a = tf.where(i == 0, tf.constant(1.0, x.dtype), tf.constant(MOMENTUM, x.dtype))
    x_adv = s["x_adv"]
    z = tf.clip_by_value(x_adv + _expand(s["eta"], x) * tf.sign(s["grad"]), lo, hi)
    x_new = tf.clip_by_value(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - s["x_old"]), lo, hi)
    logits, cur, grad = _loss_and_grad(model_fn, x_new, y, tf.cast(target, tf.int64), loss)
    # A candidate counts only if the float32 model misclassifies it (`attacks.search`):
    # the search model's verdict picks the candidates, the judge confirms them.
    newly = search.confirm_wrong(
        model_fn, x_new, y, tf.not_equal(tf.argmax(logits, axis=-1), y) & ~s["fooled"])
    wrong = newly
    rises = s["rises"] + tf.cast(cur > s["loss_prev"], x.dtype)
    better = cur > s["loss_best"]
    x_best = tf.where(_expand(better, x), x_new, s["x_best"])
    grad_best = tf.where(_expand(better, x), grad, s["grad_best"])
    loss_best = tf.where(better, cur, s["loss_best"])

    # Step-size check after iteration i + 1 (a no-op between checkpoints): halve
    # eta and restart from the best point on condition 1 or 2 (module docstring).
    check = tf.gather(tf.constant(is_check), i + 1)
    no_rise = rises < rho * tf.gather(tf.constant(length), i + 1)
    stalled = ~s["halved_at_check"] & (s["loss_best_at_check"] >= loss_best)
    halve = check & (no_rise | stalled)
    return dict(
        i=i + 1,
        x_adv=tf.where(_expand(halve, x), x_best, x_new),
        x_old=x_adv,
        grad=tf.where(_expand(halve, x), grad_best, grad),
        eta=tf.where(halve, s["eta"] / 2.0, s["eta"]),
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_found=tf.where(_expand(newly, x), x_new, s["x_found"]),
        fooled=s["fooled"] | wrong,
        rises=tf.where(check, tf.zeros_like(rises), rises),
        loss_prev=cur,
        loss_best_at_check=tf.where(check, loss_best, s["loss_best_at_check"]),
        halved_at_check=tf.where(check, halve, s["halved_at_check"]),
    )


def _result(s):
    """`(x_out, fooled)`: per example, the first misclassified iterate where there
    is one (`fooled` True), else the point of highest loss."""
    return tf.where(_expand(s["fooled"], s["x_found"]), s["x_found"], s["x_best"]), s["fooled"]


def _single_run(model_fn, x, y, target, run, **params):
    """One APGD run from one random start, as graph ops (a `tf.while_loop`),
    for a caller that traces APGD into its own `tf.function`.

    Returns:
        `(x_out, fooled)`, see `_result`.
    """
    state = _start(model_fn, x, y, target, run, **params)
    (state,) = tf.while_loop(
        lambda s: s["i"] < params["steps"],
        lambda s: (_step(model_fn, x, y, target, s, **params),),
        (state,),
    )
    return _result(state)


# Called eagerly (as `evaluate` calls APGD), a run is not one `tf.while_loop`
# but a Python loop over one compiled iteration. Measured on a 2-core AMD EPYC
# (oneDNN on): a `tf.while_loop` around the model's gradient ran, per trace and
# at random, at the speed of PGD's unrolled steps or up to 1.3-1.8x slower;
# one call per iteration (a straight-line graph, as PGD's) stays at PGD's speed
# plus the call, about 0.1 ms. Unrolling all iterations into one graph would
# take 20-30 s to trace and optimise, per batch shape.
@tf.function(reduce_retracing=True, autograph=False)
def _compiled_start(model_fn, x, y, target, run, params):
    return _start(model_fn, x, y, target, run, **params)


@tf.function(reduce_retracing=True, autograph=False)
def _compiled_step(model_fn, x, y, target, state, params):
    return _step(model_fn, x, y, target, state, **params)


def _iterations(model_fn, x, y, target, run, params):
    """Runs one APGD run eagerly; yields its state at the start and after every iteration."""
    # `run` as a tensor: a Python int would retrace once per restart and target.
    state = _compiled_start(model_fn, x, y, target, tf.constant(run), params)
    yield state
    for _ in range(params["steps"]):
        state = _compiled_step(model_fn, x, y, target, state, params)
        yield state


def _eager_run(model_fn, x, y, target, run, params):
    """One APGD run, called eagerly: `(x_out, fooled)`, see `_result`."""
    for state in _iterations(model_fn, x, y, target, run, params):
        pass
    return _result(state)


def run_apgd(model_fn, x, y=None, *, loss, eps, steps=100, restarts=1, target_classes=None,
             rho=RHO, clip_min=0.0, clip_max=1.0, seed=0):
    """APGD with loss `ce`, `dlr` or `dlr-targeted`: `(x_adv, fooled)`.

    What `apgd_ce`, `apgd_dlr` and `apgd_t` return as `x_adv`, and beside it
    `fooled`, per example: misclassified at the clean input or at some iterate
    (by the logits of the attack's own forward passes), so that a caller
    (AutoAttack) needs no forward pass of its own to know what is left.
    Arguments as `apgd_t`.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("steps", steps)
    _common.check_positive_int("restarts", restarts)
    _common.check_box(clip_min, clip_max)
    if not isinstance(rho, numbers.Real) or not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], received rho={rho!r}")
    x = tf.convert_to_tensor(x)
    logits = model_fn(x)
    num_classes = logits.shape[-1]
    if y is None:
        y = _common.predicted_labels(model_fn, x) if search.is_search(model_fn) else tf.argmax(logits, -1)
    y = tf.cast(tf.convert_to_tensor(y), tf.int64)
    fooled = tf.not_equal(tf.argmax(logits, axis=-1), y)  # Already misclassified: left as is.
    if search.is_search(model_fn):  # ... by the float32 model.
        fooled = search.judged_wrong(model_fn, x, y)
    if eps == 0:
        return x, fooled
    if loss == "dlr" and num_classes < 3:
        raise ValueError(f"apgd_dlr needs >= 3 classes, the model has {num_classes}")
    if loss == "dlr-targeted":
        if num_classes < 4:
            raise ValueError(f"apgd_t needs >= 4 classes, the model has {num_classes}")
        if target_classes is None:
            target_classes = min(9, num_classes - 1)
        _common.check_positive_int("target_classes", target_classes)
        if target_classes > num_classes - 1:
            raise ValueError(
                f"target_classes must be <= num_classes - 1 = {num_classes - 1}, "
                f"received target_classes={target_classes}"
            )
        # Targets: the 2nd, 3rd, ... largest clean logits.
        ranked = tf.math.top_k(logits, k=target_classes + 1).indices[:, 1:]
        targets = [tf.cast(ranked[:, j], tf.int64) for j in range(target_classes)]
    elif loss in ("ce", "dlr"):
        targets = [y]  # Unused by the untargeted losses.
    else:
        raise ValueError(f"loss must be ce, dlr or dlr-targeted, received loss={loss!r}")
    params = dict(loss=loss, eps=float(eps), steps=int(steps), rho=float(rho),
                  clip_min=float(clip_min), clip_max=float(clip_max), seed=seed)
    x_out = x
    run = 0
    for target in targets:
        for _ in range(restarts):
            x_out, fooled = _merge(model_fn, x, y, target, run, params, x_out, fooled)
            run += 1
    return x_out, fooled


def _apgd(model_fn, x, y, **kwargs):
    return run_apgd(model_fn, x, y, **kwargs)[0]


def _merge(model_fn, x, y, target, run, params, x_out, fooled):
    """One run on the examples not yet fooled; returns the updated `(x_out, fooled)`.

    Examples never fooled keep the highest-loss point of their latest run.
    """
    if tf.executing_eagerly():
        todo = tf.where(~fooled)[:, 0]
        if int(tf.size(todo)) == 0:
            return x_out, fooled
        sub = lambda t: tf.gather(t, todo)  # noqa: E731
        adv, hit = _eager_run(model_fn, sub(x), sub(y), sub(target), run, params)
        idx = todo[:, None]
        return (tf.tensor_scatter_nd_update(x_out, idx, adv),
                tf.tensor_scatter_nd_update(fooled, idx, hit))
    adv, hit = _single_run(model_fn, x, y, target, run, **params)
    keep = fooled
    return tf.where(_expand(keep, x), x_out, adv), fooled | hit


def apgd_ce(model_fn, x, y=None, *, eps, steps=100, restarts=1, rho=RHO, clip_min=0.0,
            clip_max=1.0, seed=0):
    """APGD on the cross-entropy loss (APGD-CE, the first attack of AutoAttack).

    Args:
        model_fn: callable mapping images to logits.
        x: images `(batch, ...)` in `[clip_min, clip_max]`.
        y: int labels; default the model's predictions.
        eps: L-inf radius (>= 0).
        steps: iterations per run (default 100, as AutoAttack).
        restarts: random restarts, each on the examples not yet fooled (default 1).
        rho: ρ of the step-size condition 1 (default 0.75).
        clip_min, clip_max: the valid pixel box.
        seed: seed of the random starts (deterministic for an int; `None`
            uses TensorFlow's global generator).

    Returns:
        `x_adv` with `||x_adv − x||_∞ <= eps`, inside the box: a misclassified
        point where one was found, else the highest-loss point.
    """
    return _apgd(model_fn, x, y, loss="ce", eps=eps, steps=steps, restarts=restarts,
                 target_classes=None, rho=rho, clip_min=clip_min, clip_max=clip_max, seed=seed)


def apgd_dlr(model_fn, x, y=None, *, eps, steps=100, restarts=1, rho=RHO, clip_min=0.0,
             clip_max=1.0, seed=0):
    """APGD on the untargeted DLR loss (needs >= 3 classes). Arguments as `apgd_ce`."""
    return _apgd(model_fn, x, y, loss="dlr", eps=eps, steps=steps, restarts=restarts,
                 target_classes=None, rho=rho, clip_min=clip_min, clip_max=clip_max, seed=seed)


def apgd_t(model_fn, x, y=None, *, eps, steps=100, restarts=1, target_classes=None, rho=RHO,
           clip_min=0.0, clip_max=1.0, seed=0):
    """APGD on the targeted DLR loss (APGD-T of AutoAttack; needs >= 4 classes).

    One run per target class, the targets being the `target_classes` largest
    clean logits after the predicted class (default `min(9, num_classes − 1)`),
    each run (× `restarts`) on the examples not yet fooled. Other arguments as
    `apgd_ce`.
    """
    return _apgd(model_fn, x, y, loss="dlr-targeted", eps=eps, steps=steps, restarts=restarts,
                 target_classes=target_classes, rho=rho, clip_min=clip_min, clip_max=clip_max,
                 seed=seed)
