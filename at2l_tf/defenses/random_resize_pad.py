"""Random resizing and padding of the input (Xie, Wang, Zhang, Ren, Yuille,
*Mitigating Adversarial Effects Through Randomization*, ICLR 2018).

Each image `x (H, W, C)` is resized to `r × r`, `r` drawn uniformly from the
integers `[min_size, output_size)`, and placed at a random offset `(a, b)`,
`0 ≤ a, b ≤ output_size − r`, on an `output_size × output_size` canvas of zeros:

    z = pad_{a,b}( resize_{r×r}(x) ),     r ~ U{min_size, ..., output_size − 1}

The paper: Inception images 299 → r ∈ [299, 331) → 331. MNIST (the default here):
28 → r ∈ [28, 32) → 32, the same ~10% growth scaled to the smaller image.
"""

import numbers

import keras
import tensorflow as tf


def _check_size(name, value):
    if value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, received {name}={value!r}")


def _interpolation_matrices(sizes, offsets, in_size, out_size, dtype):
    """Per-example `(batch, out_size, in_size)` matrices of a bilinear 1-D resize + pad.

    Row `p` of example `e` is zero outside `[offsets_e, offsets_e + sizes_e)` (the
    padding); inside, it holds the two bilinear weights of source coordinate
    `(p − offset + 0.5)·in_size/size − 0.5`, clamped to `[0, in_size − 1]` (half-pixel
    centres, edge clamping: the weights of `tf.image.resize(..., "bilinear")`).
    """
    sizes = tf.cast(sizes, dtype)[:, None]
    local = tf.range(out_size, dtype=dtype)[None, :] - tf.cast(offsets, dtype)[:, None]
    inside = (local >= 0) & (local < sizes)
    source = (local + 0.5) * (in_size / sizes) - 0.5
    source = tf.clip_by_value(source, 0.0, in_size - 1.0)
    lower = tf.floor(source)
    frac = source - lower
    lower = tf.cast(lower, tf.int32)
    upper = tf.minimum(lower + 1, in_size - 1)
    weights = (1.0 - frac)[..., None] * tf.one_hot(lower, in_size, dtype=dtype)
    weights += frac[..., None] * tf.one_hot(upper, in_size, dtype=dtype)
    return weights * tf.cast(inside, dtype)[..., None]


@keras.saving.register_keras_serializable(package="at2l_tf")
class RandomResizePad(keras.layers.Layer):
    """Randomly resizes and zero-pads images (Xie et al., ICLR 2018): a randomized defence.

    Every image gets its own draw (per example, not per batch): size
    `r ~ U{min_size, ..., output_size − 1}`, bilinear resize to `r × r`, then zero
    padding to `output_size × output_size` at an offset drawn uniformly from every
    placement that fits (`0 .. output_size − r` on each axis; Xie's and Athalye's
    code draw from `0 .. output_size − r − 1`, never flush right or bottom, which
    we do not copy). The paper's ImageNet setting is 299 → [299, 331) → 331; the
    MNIST defaults here are 28 → [28, 32) → 32.

    **Unlike Keras augmentation layers, it stays random at inference**
    (`training=False` too): the randomness is the defence. Draws come from a
    `keras.random.SeedGenerator(seed)`, so consecutive calls differ while two
    fresh layers with the same integer seed draw the same sequence.

    **Gradient masking.** The layer is differentiable with respect to its input
    (resize and pad are linear maps, done as two batched matrix products), but
    each call samples a different transformation, so one gradient is a noisy,
    misleading estimate: randomness masks the gradient. Evaluate it with EOT
    (`at2l_tf.attacks.eot.eot_model_fn`; Athalye et al., ICML 2018, bring it to 0%
    on ImageNet at eps = 8/255).

    Why matrices rather than `tf.image.resize` + `tf.pad`: those take one size per
    call (one draw per batch), and TensorFlow's registered gradient of
    `ImageProjectiveTransformV3` (per-example transforms) warps the upstream
    gradient with the inverse transform, not the exact adjoint of the bilinear
    sampling. The resize of each axis here is an `(output_size, input_size)`
    interpolation matrix, so the forward is exactly `tf.image.resize(x, (r, r))`
    (bilinear, half-pixel centres) padded with zeros, and the gradient is exact.

    Shapes: `(batch, H, W, C)` → `(batch, output_size, output_size, C)`, or one
    image `(H, W, C)` → `(output_size, output_size, C)` (for `tf.data.map`). `H`
    and `W` must be static; non-square images are resized to `r × r` too, as the
    paper does.

    Args:
        output_size: side of the padded output (default 32).
        min_size: smallest random size; default `max(H, W)` of the input. Sizes
            must satisfy `max(H, W) <= min_size < output_size` (images are only
            ever enlarged).
        seed: int seed of the draws, or `None` for a random one.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    # The adaptive attack `evaluate --adaptive=auto` wraps gradient attacks in.
    adaptive_attack = "eot"

    def __init__(self, output_size=32, min_size=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_size("output_size", output_size)
        _check_size("min_size", min_size)
        if min_size is not None and min_size >= output_size:
            raise ValueError(
                "min_size must be < output_size, received "
                f"min_size={min_size}, output_size={output_size}"
            )
        self.output_size = int(output_size)
        self.min_size = None if min_size is None else int(min_size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _sizes(self, input_shape):
        """`(H, W, min_size)` for `input_shape`, checking the size constraints."""
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "RandomResizePad expects images (batch, H, W, C) or (H, W, C), "
                f"received input_shape={tuple(input_shape)}"
            )
        height, width = input_shape[-3], input_shape[-2]
        if height is None or width is None:
            raise ValueError(
                f"RandomResizePad needs static H and W, received input_shape={tuple(input_shape)}"
            )
        side = max(height, width)
        min_size = side if self.min_size is None else self.min_size
        if not side <= min_size < self.output_size:
            raise ValueError(
                "sizes must satisfy max(H, W) <= min_size < output_size, received "
                f"H={height}, W={width}, min_size={min_size}, output_size={self.output_size}"
            )
        return height, width, min_size

    def build(self, input_shape):
        self._sizes(input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        # `training` is ignored on purpose: the defence is random at inference too.
        del training
        x = tf.convert_to_tensor(inputs)
        if x.dtype != self.compute_dtype:
            x = tf.cast(x, self.compute_dtype)
        single = x.shape.rank == 3
        if single:
            x = x[None]
        height, width, min_size = self._sizes(x.shape)
        batch = tf.shape(x)[0]
        sizes = keras.random.randint(
            (batch,), min_size, self.output_size, dtype="int32", seed=self.seed_generator
        )
        # Offsets uniform in 0 .. output_size - r, per axis and example.
        room = tf.cast(self.output_size - sizes + 1, tf.float32)[:, None]
        u = keras.random.uniform((batch, 2), seed=self.seed_generator)
        offsets = tf.minimum(tf.cast(tf.floor(u * room), tf.int32), tf.cast(room, tf.int32) - 1)
        rows = _interpolation_matrices(sizes, offsets[:, 0], height, self.output_size, x.dtype)
        cols = _interpolation_matrices(sizes, offsets[:, 1], width, self.output_size, x.dtype)
        out = tf.einsum("bph,bhwc->bpwc", rows, x)
        out = tf.einsum("bqw,bpwc->bpqc", cols, out)
        return out[0] if single else out

    def compute_output_shape(self, input_shape):
        self._sizes(input_shape)
        return tuple(input_shape[:-3]) + (self.output_size, self.output_size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"output_size": self.output_size, "min_size": self.min_size, "seed": self.seed}
        )
        return config
