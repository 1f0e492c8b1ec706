"""Properties of the RandomResizePad layer (Xie et al., 2018)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.defenses import RandomResizePad


def _images(n=8, seed=0):
    """Strictly positive images, so that the zero padding is easy to find."""
    rng = np.random.default_rng(seed)
    return (0.05 + 0.95 * rng.uniform(size=(n, 28, 28, 1))).astype(np.float32)


def _support(image):
    """`(top, left, height, width)` of the nonzero region of one `(H, W, C)` image."""
    rows = np.flatnonzero(np.any(image != 0, axis=(1, 2)))
    cols = np.flatnonzero(np.any(image != 0, axis=(0, 2)))
    return rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_output_shape():
    layer = RandomResizePad(seed=0)
    assert layer(tf.zeros((3, 28, 28, 2))).shape == (3, 32, 32, 2)
    assert layer(tf.zeros((28, 28, 1))).shape == (32, 32, 1)
    assert layer.compute_output_shape((None, 28, 28, 1)) == (None, 32, 32, 1)
    assert RandomResizePad(40)(keras.Input((28, 28, 3))).shape == (None, 40, 40, 3)


def test_stays_random_at_inference():
    layer = RandomResizePad(seed=0)
    x = _images()
    first, second = layer(x, training=False), layer(x, training=False)
    assert np.max(np.abs(first - second)) > 0.1


def test_same_seed_gives_the_same_draws():
    x = _images()
    a, b, c = RandomResizePad(seed=7), RandomResizePad(seed=7), RandomResizePad(seed=8)
    for _ in range(2):
        out_a, out_b, out_c = a(x), b(x), c(x)
        np.testing.assert_array_equal(out_a, out_b)
        assert np.max(np.abs(out_a - out_c)) > 0.1


def test_content_is_the_bilinear_resize_zero_padded():
    # min_size = output_size - 1 fixes r = 31; only the offsets (0 or 1) are random.
    x = _images(16)
    out = RandomResizePad(32, min_size=31, seed=0)(x).numpy()
    resized = tf.image.resize(x, (31, 31), method="bilinear").numpy()
    offsets = set()
    for image, expected in zip(out, resized):
        top, left, height, width = _support(image)
        assert (height, width) == (31, 31)
        np.testing.assert_allclose(image[top : top + 31, left : left + 31], expected, atol=1e-5)
        outside = image.copy()
        outside[top : top + 31, left : left + 31] = 0
        np.testing.assert_array_equal(outside, 0.0)
        offsets.add((top, left))
    assert len(offsets) > 1  # per-example offsets


def test_random_sizes_and_offsets_per_example():
    out = RandomResizePad(seed=1)(tf.ones((64, 28, 28, 1))).numpy()
    sizes, offsets = set(), set()
    for image in out:
        top, left, height, width = _support(image)
        assert height == width and 28 <= height < 32
        assert top + height <= 32 and left + width <= 32
        # A constant image stays constant inside, zeros outside.
        np.testing.assert_allclose(image[top : top + height, left : left + width], 1.0, atol=1e-6)
        assert image.sum() == pytest.approx(height * width, rel=1e-5)
        sizes.add(height)
        offsets.add((top, left))
    assert len(sizes) == 4  # 28, 29, 30, 31 all drawn in one batch
    assert len(offsets) > 5


def test_gradient_wrt_input_is_nonzero():
    x = tf.constant(_images(4))
    layer = RandomResizePad(seed=0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=False)
        loss = tf.reduce_sum(out * tf.random.stateless_uniform(out.shape, seed=[0, 1]))
    grad = tape.gradient(loss, x).numpy()
    # Enlarging: every input pixel reaches some output pixel.
    assert np.all(grad > 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_size=32, min_size=32), "min_size must be < output_size"),
        (dict(output_size=32, min_size=40), "min_size must be < output_size"),
        (dict(output_size=0), "output_size must be an integer >= 1"),
        (dict(output_size=32.5), "output_size must be an integer >= 1"),
        (dict(min_size=-1), "min_size must be an integer >= 1"),
    ],
)
def test_bad_sizes_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomResizePad(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(output_size=32, min_size=27), dict(output_size=28), dict(output_size=20)],
)
def test_bad_sizes_for_the_input_rejected(kwargs):
    with pytest.raises(ValueError, match=r"max\(H, W\) <= min_size < output_size.*H=28"):
        RandomResizePad(**kwargs)(tf.zeros((1, 28, 28, 1)))


def test_get_config_round_trips(tmp_path):
    layer = RandomResizePad(output_size=36, min_size=30, seed=3, name="rrp")
    clone = RandomResizePad.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(_images()), layer(_images()))
    model = keras.Sequential([keras.Input((28, 28, 1)), RandomResizePad(seed=0)])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[0], RandomResizePad)
    assert loaded.layers[0].get_config() == model.layers[0].get_config()


def test_works_in_tf_function_and_tf_data():
    layer = RandomResizePad(seed=0)
    x = np.repeat(_images(1), 4, axis=0)
    out = tf.function(lambda v: layer(v, training=False))(x).numpy()
    assert out.shape == (4, 32, 32, 1)
    assert np.max(np.abs(out[0] - out[1:])) > 0.1  # per-example draws in the graph too
    batches = list(tf.data.Dataset.from_tensor_slices(x).batch(2).map(layer))
    assert [tuple(b.shape) for b in batches] == [(2, 32, 32, 1)] * 2
    singles = list(tf.data.Dataset.from_tensor_slices(x).map(layer))
    assert all(s.shape == (32, 32, 1) for s in singles)
    assert np.max(np.abs(singles[0].numpy() - singles[1].numpy())) > 0.1
