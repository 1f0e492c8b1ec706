"""Properties of the ThermometerEncoding layer (Buckman et al., 2018) and its BPDA surrogate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.defenses import ThermometerEncoding, thermometer

VALUES = (0.0, 0.49, 0.5, 0.99, 1.0)
# The bin min(floor(l * x), l - 1) of each of VALUES, by hand.
HAND_BINS = {2: (0, 0, 1, 1, 1), 4: (0, 1, 2, 3, 3), 16: (0, 7, 8, 15, 15)}


def _code(bin_, levels):
    return [1.0] * (bin_ + 1) + [0.0] * (levels - bin_ - 1)


@pytest.mark.parametrize("levels", sorted(HAND_BINS))
def test_encoding_matches_hand_computation(levels):
    x = tf.constant(VALUES, shape=(1, 1, len(VALUES), 1))
    out = ThermometerEncoding(levels)(x).numpy().reshape(len(VALUES), levels)
    expected = [_code(b, levels) for b in HAND_BINS[levels]]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        ThermometerEncoding(levels).encode_levels(x).numpy().ravel(), HAND_BINS[levels]
    )


def test_each_channel_bits_are_contiguous():
    x = tf.constant([[[[0.0, 0.3, 1.0]]]])  # one pixel, three channels
    out = ThermometerEncoding(4)(x).numpy().ravel()
    np.testing.assert_array_equal(out, _code(0, 4) + _code(1, 4) + _code(3, 4))


def test_output_shape():
    layer = ThermometerEncoding(16)
    assert layer(tf.zeros((2, 5, 7, 3))).shape == (2, 5, 7, 48)
    assert layer.compute_output_shape((None, 5, 7, 3)) == (None, 5, 7, 48)
    assert ThermometerEncoding(16)(keras.Input((28, 28, 1))).shape == (None, 28, 28, 16)


@pytest.mark.parametrize("levels", [1, 0, -3, 2.5, True, "16"])
def test_bad_levels_rejected(levels):
    with pytest.raises(ValueError, match="levels must be an integer >= 2, received levels="):
        ThermometerEncoding(levels)


def test_get_config_round_trips(tmp_path):
    layer = ThermometerEncoding(levels=8, name="thermo")
    clone = ThermometerEncoding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.levels == 8
    model = keras.Sequential([keras.Input((4, 4, 1)), layer, keras.layers.Flatten()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(size=(3, 4, 4, 1)).astype(np.float32)
    assert isinstance(loaded.layers[0], ThermometerEncoding)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_works_in_tf_data_and_tf_function():
    layer = ThermometerEncoding(4)
    x = np.random.default_rng(0).uniform(size=(6, 5, 5, 2)).astype(np.float32)
    expected = layer(x).numpy()
    batches = list(tf.data.Dataset.from_tensor_slices(x).batch(3).map(layer))
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    unbatched = list(tf.data.Dataset.from_tensor_slices(x).map(layer))
    np.testing.assert_array_equal(np.stack(unbatched), expected)
    np.testing.assert_array_equal(tf.function(layer)(x), expected)
    np.testing.assert_array_equal(tf.function(layer.bpda)(x), expected)


def test_plain_gradient_is_zero_bpda_gradient_is_not():
    levels = 16
    layer = ThermometerEncoding(levels)
    # Inside bins 0 .. l-2, off the edges: exactly one one-sided ramp (bit b + 1) has slope l.
    inside = (np.arange(levels - 1)[:, None] + np.array([0.3, 0.7])) / levels
    x = tf.constant(inside.reshape(1, levels - 1, 2, 1), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        hard = layer(x)
        ramp = layer.bpda(x, surrogate="ramp")
        centered = layer.bpda(x)
        sums = [tf.reduce_sum(v) for v in (hard, ramp, centered)]
    plain_grad, ramp_grad, centered_grad = (tape.gradient(v, x) for v in sums)
    assert plain_grad is not None  # defined, so attacks run, but all zero
    np.testing.assert_array_equal(plain_grad, np.zeros_like(x))
    np.testing.assert_array_equal(ramp, hard)
    np.testing.assert_array_equal(centered, hard)  # BPDA's forward is the exact code.
    np.testing.assert_allclose(ramp_grad, np.full(x.shape, levels), rtol=1e-6)
    # Centred ramps of width 2 bins, slope l/2: two of them cover every point.
    np.testing.assert_allclose(centered_grad, np.full(x.shape, levels), rtol=1e-6)


def test_bpda_gradient_reaches_black_and_saturated_pixels():
    """The centred surrogate gives every pixel a gradient; the one-sided ramp none in the top bin."""
    layer = ThermometerEncoding(16)
    x = tf.constant([[[[0.0], [0.97], [1.0]]]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        centered = tf.reduce_sum(layer.bpda(x))
        ramp = tf.reduce_sum(layer.bpda(x, surrogate="ramp"))
    assert (tape.gradient(centered, x).numpy().ravel() > 0).all()
    grad = tape.gradient(ramp, x).numpy().ravel()
    assert grad[0] > 0
    np.testing.assert_array_equal(grad[1:], [0.0, 0.0])
    with pytest.raises(ValueError, match="surrogate='tanh'"):
        layer.bpda(x, surrogate="tanh")


@pytest.mark.parametrize("levels", [4, 10, 16])
def test_ramp_equals_code_at_bin_edges(levels):
    edges = tf.constant(np.arange(levels + 1) / levels, tf.float32, shape=(1, levels + 1, 1))
    np.testing.assert_array_equal(
        thermometer.thermometer_ramp(edges, levels), ThermometerEncoding(levels)(edges)
    )


@pytest.mark.parametrize("levels", [3, 10, 16])
def test_level_bounds_are_the_extreme_values_of_each_bin(levels):
    bins = tf.range(levels)
    low, high = ThermometerEncoding(levels).level_bounds(bins)
    np.testing.assert_array_equal(thermometer.encode_levels(low, levels), bins)
    np.testing.assert_array_equal(thermometer.encode_levels(high, levels), bins)
    above = np.nextafter(high.numpy()[:-1], np.float32(np.inf))
    below = np.nextafter(low.numpy()[1:], np.float32(-np.inf))
    np.testing.assert_array_equal(thermometer.encode_levels(above, levels), bins[1:])
    np.testing.assert_array_equal(thermometer.encode_levels(below, levels), bins[:-1])


def test_soft_encoding_of_one_hot_is_the_code():
    layer = ThermometerEncoding(8)
    bins = tf.constant([[[[0, 3], [7, 5]]]])  # (1, 1, 2, C=2)
    np.testing.assert_array_equal(
        layer.soft_encoding(tf.one_hot(bins, 8)), layer.levels_to_thermometer(bins)
    )
    x = tf.constant([[[[0.0, 0.4], [1.0, 0.7]]]])
    np.testing.assert_array_equal(layer.levels_to_thermometer(layer.encode_levels(x)), layer(x))
