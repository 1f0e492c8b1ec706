"""Square attack, L-inf (Andriushchenko, Croce, Flammarion, Hein, "Square Attack:
a query-efficient black-box adversarial attack via random search", ECCV 2020,
Algorithms 1 and 2).

A random search on the margin loss `L(x) = z_y(x) - max_{i != y} z_i(x)` (`z` the
logits; the example is misclassified once `L < 0`). With `lo = max(x - eps, clip_min)`
and `hi = min(x + eps, clip_max)` (the eps ball ∩ the box, per pixel):

    x_best = lo or hi per pixel, one random choice per (column, channel)  (vertical stripes)
    for i = 1 .. queries - 1, while some example has L(x_best) >= 0:
        s      = max(round(sqrt(p_i * H * W)), 1)         (p_i: `_p_selection`)
        x_new  = x_best with one s x s window, at a uniformly random position, set to
                 lo or hi per channel at random (`x_best + 2 eps * ±1`, projected)
        x_best = x_new  where L(x_new) < L(x_best)

An example stops as soon as it is misclassified. Every step is one forward pass
(one query): the stripes use one and each iteration one, `queries` in all per
example (the clean check that leaves misclassified examples alone is not counted,
as in the authors' code).

Square uses the model's outputs only, never its gradients, so a defence that
masks or obfuscates gradients does not slow it down: when Square beats the
gradient attacks on a model, the gradients are not to be trusted.

Where this code follows the paper rather than the released code:

* Window positions are uniform on `{0, ..., H - s}` (Algorithm 2); both
  max-andr/square-attack and fra31/auto-attack draw from `{0, ..., H - s - 1}`
  (an exclusive upper bound), so their windows never touch the last row/column.
* Positions and signs are drawn per example, as in the paper and in the
  authors' max-andr/square-attack (AutoAttack shares one window per batch).

As in max-andr/square-attack, the signs of a window are redrawn until the
window actually changes `x_best`, so no query is spent on an unchanged image;
the side is capped at `min(H, W)` (AutoAttack) rather than `H - 1`. An example
stops once its margin is < 0 (the codes use <= 0; they differ only on exact
ties, where `argmax` may still return `y`).

**Reduced-precision search** (`attacks.search.SearchModel`, `evaluate
--attack_precision=bfloat16`): the margins decide which point Square keeps and
when it stops, so they are float32. `margin_best` is always the float32 model's
margin of `x_best` (the clean input and the striped start are judged in
float32); beside it Square keeps the copy's margin of `x_best`. Each query runs
on the bfloat16 copy, which screens the candidates: one whose bfloat16 margin
is below the copy's margin of `x_best` (plus `BF16_SLACK` × its largest
|logit|, 0 by default), or below 0, is judged again in float32 — those
candidates only — and kept only if its float32 margin is smaller than
`margin_best`. So rounding can never make Square keep a worse point, nor stop
on a point that fools only the copy (such candidates are counted in
`SearchModel.rejected`); at worst it passes over an improvement the copy
cannot see. Comparing the copy with itself (not with the float32 margin)
cancels its systematic offset, so about as many candidates are judged as the
copy finds better.

Batched and graph-safe: one `tf.while_loop` over iterations that queries the
model on the still-robust examples only and ends when all are fooled;
randomness from stateless ops seeded by `seed` (derived per iteration), so a
fixed seed gives the same result.
"""

import math
import numbers

import tensorflow as tf

from at2l_tf.attacks import _common, search

# Iterations (out of 10,000) after which p halves: the published L-inf schedule.
_P_SCHEDULE_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SEED_RANGE = 2**31 - 1
# A reduced-precision search re-judges in float32 every candidate whose search margin
# is below the search margin of the best point plus this share of its largest
# |logit| (or below 0). 0: the candidates the copy itself finds better. A slack of
# 2^-6 (room for bfloat16's rounding through a network) judged ~97% of the
# candidates on the reference model, so that Square ran slower in bfloat16 than in
# float32; 0 judged ~10% (200 queries, 32 images, a loaded machine). Whether a slack
# finds more adversarials is for the measurement on an idle machine.
BF16_SLACK = 0.0


def square(
    model_fn,
    x,
    y=None,
    *,
    eps,
    queries=5000,
    p_init=0.8,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
):
    """L-inf Square attack: score-based random search with square updates.

    Needs no gradients (only logits), which is why it catches gradient masking:
    a model that resists PGD/APGD but not Square has masked gradients.

    Args:
        model_fn: callable mapping images `(batch, H, W, C)` to logits
            `(batch, classes)` (call the model with `training=False`).
        x: float images `(batch, H, W, C)` inside `[clip_min, clip_max]`; `H`,
            `W` and `C` must be known.
        y: int labels `(batch,)`; default the model's predictions. Examples
            the model already misclassifies are returned unchanged.
        eps: L-inf radius (>= 0); `eps = 0` returns `x`.
        queries: model queries per example (>= 1), default 5,000 (AutoAttack):
            one for the striped initialisation, one per iteration.
        p_init: initial fraction of pixels in the square, in (0, 1]; default
            0.8, the paper's L-inf setting. It halves on the schedule of
            `_p_selection`.
        clip_min, clip_max: the valid pixel box.
        seed: int seed of the stateless random draws; `None` draws one from
            TensorFlow's global generator (`keras.utils.set_random_seed`).

    Called eagerly, the attack runs as a `tf.function` traced once per
    `model_fn` and parameter set (not per seed); inside a `tf.function` it
    becomes part of that graph.

    Returns:
        `x_adv`, same shape and dtype as `x`, with `||x_adv - x||_inf <= eps`
        and inside the box: the first misclassified point found, or the point
        of smallest margin when none was found within `queries`.

    Raises:
        ValueError: on a bad argument.
        TypeError: on a non-numeric `eps` or `p_init`.
    """
    return run_square(model_fn, x, y, eps=eps, queries=queries, p_init=p_init,
                      clip_min=clip_min, clip_max=clip_max, seed=seed)[0]


def run_square(
    model_fn,
    x,
    y=None,
    *,
    eps,
    queries=5000,
    p_init=0.8,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
):
    """`square`'s `x_adv`, and beside it `fooled`: per example, misclassified by
    the attack's own queries (its margin went below 0, or the clean input was
    already misclassified), so that a caller (AutoAttack) needs no forward pass
    of its own to know what is left. Arguments as `square`.

    Returns:
        `(x_adv, fooled)`.
    """
    _common.check_nonnegative("eps", eps)
    _common.check_positive_int("queries", queries)
    _check_p_init(p_init)
    _common.check_box(clip_min, clip_max)
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, received seed={seed!r}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"x must have a known shape (batch, H, W, C), received shape {x.shape}")
    if eps == 0:
        y_pred = _common.predicted_labels(model_fn, x)
        fooled = tf.zeros_like(y_pred, tf.bool) if y is None else tf.not_equal(
            y_pred, tf.cast(y, y_pred.dtype))
        return x, fooled

    if seed is None:
        seed_pair = tf.random.uniform([2], maxval=_SEED_RANGE, dtype=tf.int64)
    else:
        seed_pair = tf.constant([0, int(seed)], tf.int64)
    params = dict(
        eps=float(eps),
        queries=int(queries),
        p_init=float(p_init),
        clip_min=float(clip_min),
        clip_max=float(clip_max),
        seed=seed_pair,  # a tensor: a new seed does not retrace
    )
    return _common.run_graph_attack(_attack, model_fn, x, y, params)


def _check_p_init(p_init):
    if not isinstance(p_init, numbers.Real) or isinstance(p_init, bool):
        raise TypeError(f"p_init must be a number, received p_init={p_init!r}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], received p_init={p_init}")


def _p_selection(p_init, it, queries):
    """Fraction of pixels in the square at iteration `it` (0-based) of `queries`.

    The published L-inf schedule: `p_init`, halved after iterations 10, 50,
    200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to `queries`
    as `int(it / queries * 10000)` (`p_selection` of the authors' code).
    """
    it = int(it / queries * 10000)
    halvings = sum(it > step for step in _P_SCHEDULE_STEPS)
    return p_init / 2**halvings


def _square_side(p, height, width):
    """Side of the square covering a fraction `p` of the `height * width` pixels."""
    return min(max(int(round(math.sqrt(p * height * width))), 1), height, width)


def _margin(logits, y):
    """`z_y - max_{i != y} z_i` per example: negative once misclassified."""
    is_label = tf.one_hot(y, tf.shape(logits)[-1], on_value=True, off_value=False)
    label_logit = tf.gather(logits, y, batch_dims=1)
    other = tf.reduce_max(tf.where(is_label, tf.cast(-float("inf"), logits.dtype), logits), -1)
    return label_logit - other


def _random_signs(shape, seed):
    """Uniform draws from {False, True} (True: the upper bound `hi`)."""
    return tf.equal(tf.random.stateless_uniform(shape, seed, maxval=2, dtype=tf.int32), 1)


def _fold(seed, data):
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


def _judged_margin(model_fn, x_new, y, margin_best, search_best):
    """`(float32 margin, search margin)` of the candidates `x_new` of a reduced-precision query.

    The float32 margin of a candidate whose search (bfloat16) margin is below
    `search_best + slack` or below 0, else `+inf` (not kept). Candidates that
    fool the search model but not the float32 one are added to
    `model_fn.rejected`. `margin_best` (float32) is what a candidate must beat.
    """
    del margin_best  # Compared by the caller; the screen compares the copy with itself.
    logits = model_fn(x_new)
    margin = _margin(logits, y)
    slack = BF16_SLACK * tf.reduce_max(tf.abs(logits), axis=-1)
    promising = (margin < search_best + slack) | (margin < 0)
    idx = tf.where(promising)
    inf = tf.fill(tf.shape(margin), tf.constant(float("inf"), margin.dtype))

    def judged():
        return tf.tensor_scatter_nd_update(
            inf, idx,
            _margin(search.judge_logits(model_fn, tf.gather_nd(x_new, idx)), tf.gather_nd(y, idx)),
        )

    judged_margin = tf.cond(tf.reduce_any(promising), judged, lambda: inf)
    model_fn.rejected.assign_add(
        tf.reduce_sum(tf.cast((margin < 0) & (judged_margin >= 0), tf.int64)))
    return judged_margin, margin


def _attack(model_fn, x, y, *, eps, queries, p_init, clip_min, clip_max, seed):
    """The Square attack as TensorFlow ops, for a traced call."""
    y = tf.cast(y, tf.int32)
    _, height, width, channels = x.shape
    eps = tf.cast(eps, x.dtype)
    # Every pixel of x_best is exactly lo or hi, so comparing windows is exact.
    lo = tf.maximum(x - eps, tf.cast(clip_min, x.dtype))
    hi = tf.minimum(x + eps, tf.cast(clip_max, x.dtype))
    sides = tf.constant(
        [_square_side(_p_selection(p_init, i, queries), height, width) for i in range(queries - 1)],
        dtype=tf.int32,
        shape=[queries - 1],
    )

    # With a reduced-precision search, every margin kept is the float32 model's.
    judge = search.judge_of(model_fn)
    clean_margin = _margin(judge(x), y)
    stripes = _random_signs(tf.stack([tf.shape(x)[0], 1, width, channels]), _fold(seed, 0))
    x_init = tf.where(stripes, hi, lo)
    init_margin = _margin(judge(x_init), y)
    done_clean = clean_margin < 0  # already misclassified: never touched
    x_best = tf.where(done_clean[:, None, None, None], x, x_init)
    margin_best = tf.where(done_clean, clean_margin, init_margin)
    # The search model's margin of x_best: what a reduced-precision search screens against.
    mixed = search.is_search(model_fn)
    search_best = _margin(model_fn(x_init), y) if mixed else margin_best

    def cond(it, x_best, margin_best, search_best):
        return tf.logical_and(it < queries - 1, tf.reduce_any(margin_best >= 0))

    def body(it, x_best, margin_best, search_best):
        # Only the examples still classified correctly are queried.
        idx = tf.where(margin_best >= 0)
        n = tf.shape(idx)[0]
        lo_a, hi_a, best_a = (tf.gather_nd(t, idx) for t in (lo, hi, x_best))
        y_a, margin_a = tf.gather_nd(y, idx), tf.gather_nd(margin_best, idx)
        search_a = tf.gather_nd(search_best, idx)

        side = sides[it]
        it_seed = _fold(seed, it + 1)
        top = tf.random.stateless_uniform(
            [n], _fold(it_seed, 0), maxval=height - side + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [n], _fold(it_seed, 1), maxval=width - side + 1, dtype=tf.int32
        )
        rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # (n, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # (n, W)
        window = in_rows[:, :, None, None] & in_cols[:, None, :, None]  # (n, H, W, 1)

        def propose(signs):
            return tf.where(window, tf.where(signs, hi_a, lo_a), best_a)

        # A proposal leaves x_best as it is when, in every channel, the window
        # already holds the bound its sign picks. Whether it does, per example
        # and channel, is computed once: the redraws below work on (n, C) flags
        # instead of whole images (the same test as `propose(signs) == best_a`
        # everywhere, at a fraction of the cost).
        outside = ~window
        window_is_hi = tf.reduce_all(tf.equal(best_a, hi_a) | outside, axis=[1, 2])  # (n, C)
        window_is_lo = tf.reduce_all(tf.equal(best_a, lo_a) | outside, axis=[1, 2])

        def unchanged(signs):
            return tf.reduce_all(
                tf.where(signs[:, 0, 0, :], window_is_hi, window_is_lo), axis=1
            )

        # Redraw the signs of windows that would leave x_best as it is (the
        # authors' code does the same): at most one sign per channel does so.
        def redraw_cond(round_, signs):
            return tf.reduce_any(unchanged(signs))

        def redraw(round_, signs):
            fresh = _random_signs([n, 1, 1, channels], _fold(it_seed, round_ + 3))
            return round_ + 1, tf.where(unchanged(signs)[:, None, None, None], fresh, signs)

        signs = _random_signs([n, 1, 1, channels], _fold(it_seed, 2))
        _, signs = tf.while_loop(redraw_cond, redraw, (tf.constant(0), signs))

        x_new = propose(signs)
        if mixed:
            margin_new, search_new = _judged_margin(model_fn, x_new, y_a, margin_a, search_a)
        else:
            margin_new = search_new = _margin(model_fn(x_new), y_a)
        better = margin_new < margin_a
        best_a = tf.where(better[:, None, None, None], x_new, best_a)
        margin_a = tf.where(better, margin_new, margin_a)
        x_best = tf.tensor_scatter_nd_update(x_best, idx, best_a)
        margin_best = tf.tensor_scatter_nd_update(margin_best, idx, margin_a)
        search_a = tf.where(better, search_new, search_a)
        search_best = tf.tensor_scatter_nd_update(search_best, idx, search_a)
        return it + 1, x_best, margin_best, search_best

    _, x_best, margin_best, _ = tf.while_loop(
        cond, body, (tf.constant(0), x_best, margin_best, search_best))
    return x_best, margin_best < 0
