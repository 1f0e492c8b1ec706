"""Thermometer encoding of the input (Buckman, Roy, Raffel, Goodfellow, *Thermometer
Encoding: One Hot Way To Resist Adversarial Examples*, ICLR 2018).

Each pixel value `x ∈ [0, 1]` is quantized into one of `l` equal bins and written
as `l` bits, the first `b(x) + 1` of them set:

    b(x) = min(⌊l·x⌋, l − 1)                       (the bin, 0 .. l−1)
    τ(x)_k = 1[k ≤ b(x)],   k = 0 .. l−1            (the thermometer code)

so that, with `l = 4`: `0 → 1000`, `0.3 → 1100`, `0.6 → 1110`, `1 → 1111`. Bit 0
is always set. This is the convention of the code in anishathalye/obfuscated-gradients
(`thermometer/discretization_utils.py`, `discretize_uniform(..., thermometer=True)`:
one-hot of the bin, then a reversed cumulative sum); the paper's Table 1 writes
the code with the bit order reversed (the set bits at the high end), a fixed
permutation of the channels that changes nothing for the network that reads
them. That code computes the bin as `int(0.99999·l·x)`; we use
`⌊l·x⌋` capped at `l − 1`, which differs only within a relative 1e-5 above a bin
edge (`x = 0.5` at `l = 2` is bin 1 here, bin 0 there), and for no 8-bit pixel
value `v/255` at `l = 16`.

The encoding is a step function: its gradient is zero almost everywhere. The layer
makes that explicit (its gradient is defined and identically zero, not `None`), so a
plain gradient attack runs but learns nothing — the defence **masks gradients**.
Evaluate it honestly with BPDA (`at2l_tf.attacks.bpda`; Athalye, Carlini, Wagner,
ICML 2018): forward the exact code, backward through a differentiable
surrogate (`ThermometerEncoding.bpda`: by default a ramp centred on each bin
edge, `thermometer_soft`, which also reaches saturated pixels; Athalye et al.'s
one-sided ramp, `thermometer_ramp`, does not, and was 8.8 points weaker on MNIST). Buckman
et al.'s own attack on the discrete code is LS-PGA (`at2l_tf.attacks.ls_pga`),
which uses `soft_encoding` and `level_bounds` of this module.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf


def check_levels(levels):
    """Raises `ValueError` unless `levels` is an integer >= 2."""
    if not isinstance(levels, numbers.Integral) or isinstance(levels, bool) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, received levels={levels!r}")


def thresholds(levels, dtype=tf.float32):
    """The lower edge of each bin as `(levels,)`: `[-inf, 1/l, 2/l, ..., (l−1)/l]`.

    Bit `k` is `1[x >= thresholds[k]]`. Comparing with the edges rounded once to
    `dtype`, rather than flooring `l·x`, keeps the encoding and `level_bounds`
    consistent to the last bit (a float product `l·x` can round across an edge).
    Bin 0 has no lower edge, so values below 0 encode as bin 0 like 0 itself.
    """
    edges = np.arange(levels, dtype=np.float64) / levels
    edges[0] = -np.inf
    return tf.constant(edges, dtype=dtype)


def _flatten_levels(bits):
    """`(..., C, l)` → `(..., C·l)`: each input channel's `l` bits contiguous."""
    shape = tf.shape(bits)
    static = bits.shape
    channels, levels = static[-2], static[-1]
    width = channels * levels if channels is not None else shape[-2] * shape[-1]
    out = tf.reshape(bits, tf.concat([shape[:-2], [width]], axis=0))
    if static.rank is not None:
        out = tf.ensure_shape(out, static[:-2].concatenate([width if channels else None]))
    return out


def _bits(x, levels):
    """The hard code as floats `(..., C, l)`, no gradient."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x[..., None] >= thresholds(levels, x.dtype), x.dtype)


def encode_levels(x, levels):
    """The bin `b(x) = min(⌊l·x⌋, l − 1)` of every value, as int32 of `x`'s shape."""
    x = tf.convert_to_tensor(x)
    return tf.reduce_sum(tf.cast(x[..., None] >= thresholds(levels, x.dtype), tf.int32), -1) - 1


def levels_to_thermometer(bins, levels, dtype=tf.float32):
    """The code `(..., C·l)` of integer bins `(..., C)`: bit `k` is `1[k <= bins]`."""
    bins = tf.convert_to_tensor(bins)
    bits = tf.cast(tf.range(levels, dtype=bins.dtype) <= bins[..., None], dtype)
    return _flatten_levels(bits)


def soft_encoding(probabilities):
    """The soft thermometer of a distribution over the bins (LS-PGA's relaxation).

    Args:
        probabilities: `(..., C, l)`, each pixel's probabilities over its `l` bins.

    Returns:
        `(..., C·l)` with bit `k = P(bin >= k) = Σ_{j ≥ k} p_j` (a reversed
        cumulative sum), which is `levels_to_thermometer(i)` when `p` is the
        one-hot of bin `i`.
    """
    return _flatten_levels(tf.cumsum(probabilities, axis=-1, reverse=True))


def thermometer_ramp(x, levels):
    """BPDA's differentiable surrogate `(..., C·l)`: bit `k` is `clip(l·x − k + 1, 0, 1)`.

    The ramp of bit `k` rises from 0 at `x = (k−1)/l` to 1 at `x = k/l`, the edge
    where the hard bit turns on, so at every bin edge `x = j/l` it equals the hard
    code (`clip(j − k + 1, 0, 1) = 1[k ≤ j]`), and between two edges it is the
    linear interpolation of the codes at the two edges. Its derivative is `l` on
    `[(k−1)/l, k/l]` (TensorFlow's clip passes the gradient at both end points,
    so a pixel at exactly 0 still gets one, through bit 1) and 0 elsewhere; bit 0
    is constant on `[0, 1]`. The ramp is one-sided: inside bin `i` the soft code
    moves from the code of bin `i` towards that of bin `i + 1`, so values in the
    top bin `((l−1)/l, 1]` (saturated pixels at 1, say) get no gradient. This is
    Athalye et al.'s surrogate (their code works in `[0, 255]` with edges
    `256·k/l`, a 255/256 rescaling of the same ramp).
    """
    x = tf.convert_to_tensor(x)
    k = tf.range(levels, dtype=x.dtype)
    return _flatten_levels(tf.clip_by_value(levels * x[..., None] - k + 1.0, 0.0, 1.0))


BPDA_WIDTH = 2.0


def thermometer_soft(x, levels, width=BPDA_WIDTH):
    """The surrogate our BPDA differentiates: bit `k` is `clip((l·x − k)/w + 1/2, 0, 1)`.

    A ramp of width `w` bins centred on bit `k`'s edge `k/l` (value 1/2 there),
    slope `l/w`. Unlike the one-sided ramp of `thermometer_ramp`, every pixel
    within `w/2` bins of an edge gets a gradient, saturated ones (`x = 1`, in
    the top bin) included: with `w = 2`, all of `[0, 1]`. MNIST strokes are
    saturated, and BPDA through the one-sided ramp cannot lighten them: on
    the Th.En.(7) model of Table 1 (`benchmarks/studies/thermometer.py`; first 500 test
    images, eps 0.3, BPDA-APGD-CE, 100 iterations) it left 88.2% accuracy, the
    centred ramp 79.4% (w = 2), 80.8% (w = 3), 80.2% (w = 6); Square, which uses
    no gradient, 79.9% on 1,000 images. Only the gradient matters: BPDA's forward
    pass is the exact code.
    """
    x = tf.convert_to_tensor(x)
    k = tf.range(levels, dtype=x.dtype)
    return _flatten_levels(tf.clip_by_value((levels * x[..., None] - k) / width + 0.5, 0.0, 1.0))


def thermometer_encode(x, levels):
    """The thermometer code `(..., C·l)` of `x (..., C)`, with an all-zero gradient.

    The gradient is made explicit (zeros, not `None`) so that attacks and
    `tf.GradientTape` users see the masking instead of failing on a `None`.
    """
    x = tf.convert_to_tensor(x)

    @tf.custom_gradient
    def encode(v):
        def grad(upstream):
            del upstream
            return tf.zeros_like(v)

        return _flatten_levels(_bits(v, levels)), grad

    return encode(x)


def thermometer_bpda(x, levels, surrogate="centered", width=BPDA_WIDTH):
    """The exact code forward, the gradient of a surrogate backward.

    `surrogate="centered"` (default): `thermometer_soft` (width `width` bins);
    `"ramp"`: Athalye et al.'s one-sided `thermometer_ramp`, weaker on
    saturated pixels (see `thermometer_soft`).

    `soft + stop_gradient(hard − soft)`: the values are the hard code's (up to one
    float rounding of `soft + (hard − soft)`, exact here since both are in
    `[0, 1]` and the hard bits are 0 or 1).
    """
    x = tf.convert_to_tensor(x)
    if surrogate == "centered":
        soft = thermometer_soft(x, levels, width)
    elif surrogate == "ramp":
        soft = thermometer_ramp(x, levels)
    else:
        raise ValueError(f"surrogate must be 'centered' or 'ramp', received surrogate={surrogate!r}")
    hard = _flatten_levels(_bits(x, levels))
    return soft + tf.stop_gradient(hard - soft)


def level_bounds(bins, levels, dtype=tf.float32):
    """The smallest and the largest value of `dtype` that encode to each bin.

    Bin `i` holds `[i/l, (i+1)/l)` (`[(l−1)/l, +inf)` for the last, `(-inf, 1/l)`
    for the first). Returned as `(low, high)` tensors of `bins`' shape, `high`
    being the float just below the next edge, so that any value clipped into
    `[low, high]` encodes to bin `i` exactly.
    """
    bins = tf.convert_to_tensor(bins, tf.int32)
    edges = thresholds(levels, dtype)
    low = tf.gather(edges, bins)
    upper_edges = tf.concat([edges[1:], tf.constant([np.inf], dtype)], axis=0)
    high = tf.math.nextafter(tf.gather(upper_edges, bins), tf.constant(-np.inf, dtype))
    return low, high


@keras.saving.register_keras_serializable(package="at2l_tf")
class ThermometerEncoding(keras.layers.Layer):
    """Thermometer-encodes images (Buckman et al., ICLR 2018): a defence that masks gradients.

    With `l = levels`, every value `x` becomes `l` bits (equations in the module
    docstring):

        b(x) = min(⌊l·x⌋, l − 1),      τ(x)_k = 1[k ≤ b(x)],   k = 0 .. l−1

    e.g. at `l = 4`: `0 → 1000`, `0.49 → 1100`, `0.5 → 1110`, `1 → 1111`.

    Shapes: `(..., H, W, C)` → `(..., H, W, C·l)`; for each input channel its `l`
    bits are contiguous (output channel `c·l + k` is bit `k` of input channel `c`),
    as in the authors' code. Inputs are expected in `[0, 1]`; values below 0
    encode as 0, above 1 as 1. Deterministic, the same in training and inference.

    **Gradient masking.** The code is piecewise constant, and this layer's gradient
    is defined and identically zero: plain PGD / APGD through it see nothing and
    overstate robustness. Evaluate with BPDA (`at2l_tf.attacks.bpda.bpda_model_fn`,
    which uses `bpda`) — Athalye et al. bring a CIFAR-10 thermometer model to 0%
    (with adversarial training, 30%) at eps = 8/255 — or with LS-PGA
    (`at2l_tf.attacks.ls_pga`), Buckman et al.'s own attack.

    Args:
        levels: number of bins `l`, an integer >= 2 (default 16, as the paper).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    # The adaptive attack `evaluate --adaptive=auto` wraps gradient attacks in.
    adaptive_attack = "bpda"

    def __init__(self, levels=16, **kwargs):
        super().__init__(**kwargs)
        check_levels(levels)
        self.levels = int(levels)

    def call(self, inputs):
        return thermometer_encode(tf.cast(inputs, self.compute_dtype), self.levels)

    def bpda(self, x, surrogate="centered"):
        """The same values as `call`, differentiable through a surrogate (BPDA).

        Default: bit `k` back-propagates as the centred ramp
        `clip((l·x − k)/2 + 1/2, 0, 1)` (`thermometer_soft`), which reaches
        saturated pixels; `surrogate="ramp"` is Athalye et al.'s one-sided
        `clip(l·x − k + 1, 0, 1)` (`thermometer_ramp`), 8.8 points weaker on an
        adversarially trained MNIST model (measured in `thermometer_soft`).
        """
        return thermometer_bpda(tf.cast(x, self.compute_dtype), self.levels, surrogate)

    def encode_levels(self, x):
        """The bin `b(x)` of every value, int32 `(..., H, W, C)`."""
        return encode_levels(tf.cast(x, self.compute_dtype), self.levels)

    def levels_to_thermometer(self, bins):
        """The code `(..., H, W, C·l)` of integer bins `(..., H, W, C)`."""
        return levels_to_thermometer(bins, self.levels, self.compute_dtype)

    def soft_encoding(self, probabilities):
        """Bin probabilities `(..., H, W, C, l)` → soft code `(..., H, W, C·l)`: P(bin ≥ k)."""
        return soft_encoding(tf.cast(probabilities, self.compute_dtype))

    def level_bounds(self, bins):
        """`(low, high)`: the smallest and largest values that encode to `bins`."""
        return level_bounds(bins, self.levels, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return tuple(input_shape[:-1]) + (None if channels is None else channels * self.levels,)

    def get_config(self):
        config = super().get_config()
        config.update({"levels": self.levels})
        return config
