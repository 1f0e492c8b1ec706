"""Logit-Space Projected Gradient Ascent, LS-PGA (Buckman, Roy, Raffel, Goodfellow,
*Thermometer Encoding: One Hot Way To Resist Adversarial Examples*, ICLR 2018).

The attack of a thermometer-encoded classifier on its own terms: it searches the
discrete codes directly instead of differentiating through the encoding. With `l`
levels, `b(·)` the bin and `τ(·)` the code of `at2l_tf.defenses.thermometer`:

1. Reachable levels. Pixel `j` may take bin `k` iff bin `k` meets the eps ball in
   the box, `[x_j − ε, x_j + ε] ∩ [clip_min, clip_max]`, i.e. iff
   `b(max(x_j − ε, clip_min)) ≤ k ≤ b(min(x_j + ε, clip_max))`: the mask `m_jk`.
2. Relaxation. Each pixel gets logits `u_j ∈ R^l` over its levels, relaxed to

       z_j = softmax(u_j / T)   (over the reachable k only),
       τ̃(z)_jk = Σ_{k' ≥ k} z_jk'                  (a soft thermometer, P(bin ≥ k))

   which is the exact code `τ` when `z_j` is one-hot.
3. Ascent. With `L` the cross-entropy of `f(τ̃(z))` at label `y`:

       u^{t+1} = u^t + ξ · sign(∇_u L),     T^{t+1} = T^t / δ          (t = 0 .. steps−1)

   from `u^0 = 0` (or `u^0 ~ N(0, 1)` with `rand_init`), `T^0 = temperature`,
   `δ = anneal` (1.2, as the released code): the softmax sharpens towards a
   one-hot choice.
4. Decoding. Each pixel takes its best reachable level `k_j = argmax_{k: m_jk} u_jk`.

Unlike the authors' function, which returns the code, this returns an image: per
pixel, the value of bin `k_j` closest to `x_j` (`x_j` itself when the bin is
unchanged, else the near edge of the chosen bin), so that `τ(x_adv) = τ(k)`,
`||x_adv − x||_∞ ≤ ε` and `x_adv` stays in the box. Attacks are then compared in
image space, and `model_fn ∘ encode` judges `x_adv` exactly.

Where the released code (anishathalye/obfuscated-gradients,
`thermometer/discretization_attacks.py`, `adv_lspga`) and the paper differ, this
follows the paper: the code computes `sign(grad)` and then overwrites it with the
raw gradient (`signed_grad = tf.stop_gradient(grad)`), so it takes unscaled
gradient steps — a bug; here the steps are signed, as written. Its
reachable-level mask samples `l` points of the interval; here the bins are
computed exactly.

Start: the released function draws `u^0 ~ N(0, 1)` by default
(`noisy_grads=True`), but the adversarial training script of the same
repository (`thermometer/train.py`: 7 steps, ξ = 0.01 at ε = 0.031, the
defaults here) turns it off (`noisy_grads=False`, `u^0 = 0`), and so does our
default (`rand_init=False`).
Signed steps move each logit by at most `steps·ξ` (0.07 with the defaults), so
from a `N(0, 1)` start most choices are decided by the draw, not the gradient:
on a small MNIST thermometer CNN at ε = 0.3, 7 steps left 45% accuracy from the
random start against 0% from zero (random reachable levels alone: 58%). With
`rand_init=True`, use a step of the order of 1. From `u^0 = 0`, levels whose
logits tie at the end resolve to the lowest one (`argmax`).
"""

import numbers

import tensorflow as tf

from at2l_tf.attacks import _common
from at2l_tf.defenses import thermometer


def _check_positive(name, value):
    _common.check_nonnegative(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, received {name}={value}")


def _reachable(x, eps, levels, clip_min, clip_max):
    """Mask `(..., C, l)` of the bins that meet `[x − eps, x + eps] ∩ [clip_min, clip_max]`."""
    low = tf.maximum(x - eps, clip_min)
    high = tf.minimum(x + eps, clip_max)
    first = thermometer.encode_levels(low, levels)[..., None]
    last = thermometer.encode_levels(high, levels)[..., None]
    k = tf.range(levels, dtype=tf.int32)
    return (k >= first) & (k <= last), low, high


def _ls_pga_body(model_fn, x, y, *, eps, levels, steps, step_size, temperature, anneal,
                 clip_min, clip_max, rand_init, seed):
    allowed, low, high = _reachable(x, eps, levels, clip_min, clip_max)
    shape = tf.shape(allowed)
    dtype = x.dtype
    if not rand_init:
        u = tf.zeros(shape, dtype)
    elif seed is None:
        u = tf.random.normal(shape, dtype=dtype)
    else:
        u = tf.random.stateless_normal(shape, seed=[seed, 0], dtype=dtype)
    minus_inf = tf.constant(-float("inf"), dtype)

    def step(i, u, temp):
        with tf.GradientTape() as tape:
            tape.watch(u)
            z = tf.nn.softmax(tf.where(allowed, u, minus_inf) / temp, axis=-1)
            logits = model_fn(thermometer.soft_encoding(z))
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grad = tape.gradient(loss, u)
        # Unreachable levels have zero gradient (softmax weight 0), so they never move.
        return i + 1, u + step_size * tf.sign(grad), temp / anneal

    _, u, _ = tf.while_loop(
        lambda i, u, temp: i < steps,
        step,
        (tf.constant(0), u, tf.constant(temperature, dtype)),
        maximum_iterations=steps,
    )
    bins = tf.argmax(tf.where(allowed, u, minus_inf), axis=-1, output_type=tf.int32)
    return image_for_levels(x, bins, levels, low, high)


def image_for_levels(x, bins, levels, low, high):
    """The point of `[low, high]` in bin `bins` closest to `x`, per value.

    `low`/`high` bound the allowed values (the eps ball in the box); `bins` must
    be reachable (`b(low) ≤ bins ≤ b(high)`). Clipping `x` into bin `bins`, then
    into `[low, high]`, keeps the bin: if the clip moves the point to `low`, then
    `b(low) ≥ bins` (it lies above a point of the bin) and `b(low) ≤ bins`.
    """
    bin_low, bin_high = thermometer.level_bounds(bins, levels, x.dtype)
    return tf.clip_by_value(tf.clip_by_value(x, bin_low, bin_high), low, high)


def ls_pga(model_fn, x, y=None, *, eps, levels=16, steps=7, step_size=0.01, temperature=1.0,
           anneal=1.2, clip_min=0.0, clip_max=1.0, rand_init=False, seed=None):
    """LS-PGA against a thermometer-encoded classifier (Buckman et al., 2018).

    Equations in the module docstring. Runs as one `tf.while_loop` (compiled
    with `tf.function` when called eagerly), so it can run inside a training step.

    Args:
        model_fn: callable mapping **encoded** inputs `(batch, H, W, C·levels)`
            (the output of `ThermometerEncoding(levels)`, channel `c·l + k` being
            bit `k` of channel `c`) to logits. Not the full model: give the
            classifier behind the encoding.
        x: images `(batch, H, W, C)` in `[clip_min, clip_max]` (the encoding reads
            `[0, 1]`).
        y: int labels; default the predictions on the encoded `x`.
        eps: L-inf radius (>= 0), in image units.
        levels: levels `l` of the encoding (>= 2, default 16).
        steps: ascent steps (>= 1, default 7 as the authors' training).
        step_size: `ξ`, the size of the signed step in logit space (default 0.01).
        temperature: initial softmax temperature `T^0` (> 0, default 1).
        anneal: `δ`, the temperature is divided by it after every step (> 0,
            default 1.2).
        clip_min, clip_max: the valid pixel box.
        rand_init: start from `u^0 ~ N(0, 1)` instead of 0 (default False, as the
            released training script; see the module docstring before turning
            it on).
        seed: int seed of the random start (deterministic), or `None` for
            TensorFlow's global generator; unused without `rand_init`.

    Returns:
        `x_adv` of `x`'s shape and dtype with `||x_adv − x||_∞ <= eps`, inside the
        box, whose thermometer code is the chosen levels.
    """
    _common.check_nonnegative("eps", eps)
    thermometer.check_levels(levels)
    _common.check_positive_int("steps", steps)
    _common.check_nonnegative("step_size", step_size)
    _check_positive("temperature", temperature)
    _check_positive("anneal", anneal)
    _common.check_box(clip_min, clip_max)
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an integer or None, received seed={seed!r}")
    x = tf.convert_to_tensor(x)
    if eps == 0:
        return x
    if y is None:
        y = tf.argmax(model_fn(thermometer.thermometer_encode(x, levels)), axis=-1)
    params = dict(eps=float(eps), levels=int(levels), steps=int(steps),
                  step_size=float(step_size), temperature=float(temperature),
                  anneal=float(anneal), clip_min=float(clip_min), clip_max=float(clip_max),
                  rand_init=bool(rand_init), seed=seed)
    return _common.run_graph_attack(_ls_pga_body, model_fn, x, y, params)
