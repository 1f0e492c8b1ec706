"""Defense-GAN's projection layer on a tiny generator saved to a temporary file.

The generator is one dense layer with a sigmoid (latent 4 → 28×28×1): it has a
real range to project onto, and the targets are made inside that range
(`x = G(z_true)`), so the search has somewhere to go.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks import pgd
from at2l_tf.attacks.bpda import bpda_model_fn
from at2l_tf.defenses.defense_gan import DefenseGANProjection
from at2l_tf.errors import ConfigError, ModelLoadError

LATENT = 4


def _dense_generator(shape=(28, 28, 1), seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((LATENT,)),
        keras.layers.Dense(int(np.prod(shape)), activation="sigmoid",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.5)),
        keras.layers.Reshape(shape),
    ])


@pytest.fixture(scope="module")
def generator_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator.keras"
    _dense_generator().save(path)
    return str(path)


@pytest.fixture(scope="module")
def targets(generator_path):
    """Eight images in the generator's range, and the codes that make them."""
    generator = keras.saving.load_model(generator_path)
    z_true = np.random.default_rng(1).normal(size=(8, LATENT)).astype("float32")
    return np.asarray(generator(z_true)), z_true


def _layer(path, **kwargs):
    kwargs.setdefault("steps", 30)
    kwargs.setdefault("restarts", 3)
    kwargs.setdefault("seed", 0)
    return DefenseGANProjection(path, **kwargs)


def test_projection_lowers_the_error_of_its_random_starts(generator_path, targets):
    x, _ = targets
    found = _layer(generator_path).search(x, with_initial=True)
    start = np.asarray(found["initial_errors"]).min(axis=1)
    final = np.asarray(found["errors"])
    assert np.all(final < start)
    assert final.mean() < 0.2 * start.mean()
    # And it is the search, not luck: no steps, no improvement.
    none = _layer(generator_path, steps=1, learning_rate=1e-9).search(x, with_initial=True)
    np.testing.assert_allclose(none["errors"], np.asarray(none["initial_errors"]).min(axis=1),
                               rtol=1e-4)


def test_picks_the_best_restart_and_outputs_its_generator_image(generator_path, targets):
    x, _ = targets
    layer = _layer(generator_path, restarts=5, steps=5)  # few steps: restarts stay apart
    found = layer.search(x)
    generator = keras.saving.load_model(generator_path)
    restart_z = np.asarray(found["restart_z"])  # (B, R, d)
    images = np.asarray(generator(restart_z.reshape(-1, LATENT))).reshape((8, 5) + x.shape[1:])
    by_hand = np.mean((images - x[:, None]) ** 2, axis=(2, 3, 4))  # (B, R)
    np.testing.assert_allclose(found["restart_errors"], by_hand, rtol=1e-4, atol=1e-7)
    best = np.argmin(by_hand, axis=1)
    np.testing.assert_array_equal(found["best"], best)
    assert len(set(best.tolist())) > 1  # not always the same restart
    np.testing.assert_allclose(found["errors"], by_hand[np.arange(8), best], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(found["z"], restart_z[np.arange(8), best])
    # The output is G(z*).
    np.testing.assert_allclose(found["projected"], generator(np.asarray(found["z"])), atol=1e-6)


def test_output_is_a_generator_image_in_range_even_for_wild_inputs(generator_path):
    x = np.random.default_rng(0).uniform(-0.5, 1.5, size=(5, 28, 28, 1)).astype("float32")
    layer = _layer(generator_path, steps=10)
    out, z = layer.project(x, return_z=True)
    out = np.asarray(out)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, layer.generator(z), atol=1e-6)
    np.testing.assert_allclose(layer(x).shape, x.shape)


def test_same_seed_same_projection_and_random_across_calls(generator_path, targets):
    x, _ = targets
    a, b = _layer(generator_path, steps=3), _layer(generator_path, steps=3)
    np.testing.assert_array_equal(a.project(x), b.project(x))
    first, second = a.search(x)["restart_z"], a.search(x)["restart_z"]
    assert not np.allclose(first, second)  # fresh starts on every call


def test_generator_is_frozen(generator_path, targets):
    x, _ = targets
    layer = _layer(generator_path, steps=2, restarts=1)
    assert layer.trainable_weights == [] and layer.generator.trainable is False
    model = keras.Sequential([keras.Input((28, 28, 1)), layer, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    before = [w.copy() for w in layer.generator.get_weights()]
    model.train_on_batch(x, np.ones((8, 2), "float32"))
    for a, b in zip(before, layer.generator.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_plain_gradient_is_zero_and_bpda_is_the_identity(generator_path, targets):
    x, _ = targets
    layer = _layer(generator_path, steps=5)
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        plain = tf.reduce_sum(layer(x) * 3.0)
        through = layer.bpda(x)
        bpda = tf.reduce_sum(through * 3.0)
    np.testing.assert_array_equal(tape.gradient(plain, x), 0.0)
    np.testing.assert_allclose(tape.gradient(bpda, x), 3.0)
    assert layer.adaptive_attack == "bpda"
    # Forward, BPDA is the projection: an image of the generator.
    images = np.asarray(through)
    assert images.min() >= -1e-6 and images.max() <= 1 + 1e-6


def test_bpda_pgd_stays_in_the_eps_ball(generator_path, targets):
    x, _ = targets
    layer = _layer(generator_path, steps=5, restarts=2)
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    model_fn = bpda_model_fn(lambda z: classifier(z, training=False), layer)
    y = np.arange(8) % 10
    eps = 0.1
    x_adv = np.asarray(pgd(model_fn, x, y, eps=eps, steps=3))
    assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.max(np.abs(x_adv - x)) > 0.5 * eps  # BPDA gives PGD a gradient to follow


def test_works_inside_tf_function_with_an_unknown_batch(generator_path, targets):
    x, _ = targets
    layer = _layer(generator_path, steps=4)
    spec = tf.TensorSpec((None, 28, 28, 1), tf.float32)
    project = tf.function(lambda v: layer(v), input_signature=[spec])
    bpda = tf.function(lambda v: layer.bpda(v), input_signature=[spec])
    for n in (3, 8):
        out = np.asarray(project(x[:n]))
        assert out.shape == (n, 28, 28, 1) and out.min() >= 0 and out.max() <= 1
        assert np.asarray(bpda(x[:n])).shape == (n, 28, 28, 1)


def test_config_round_trip_keeps_the_generator_path(generator_path, targets, tmp_path):
    x, _ = targets
    layer = _layer(generator_path, steps=7, restarts=2, learning_rate=5.0, momentum=0.5)
    config = layer.get_config()
    assert config["generator_path"] == generator_path
    assert (config["steps"], config["restarts"], config["seed"]) == (7, 2, 0)
    assert config["init_stddev"] is None and layer.start_stddev == pytest.approx(LATENT ** -0.5)
    assert layer.decay_step == 6  # ⌈0.8 · 7⌉: the authors' ×0.1 from there on
    clone = DefenseGANProjection.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone.project(x), _layer(generator_path, steps=7, restarts=2,
                                                          learning_rate=5.0, momentum=0.5).project(x))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, DefenseGANProjection) and restored.get_config() == config
    # In a saved model, the layer comes back from its path.
    model = keras.Sequential([keras.Input((28, 28, 1)), layer, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config() == config
    assert np.asarray(loaded(x)).shape == (8, 2)


def test_a_directory_with_generator_keras_is_accepted(tmp_path):
    _dense_generator().save(tmp_path / "generator.keras")
    assert _layer(str(tmp_path)).latent_dim == LATENT


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an integer >= 1, received steps=0"),
    ({"restarts": 0}, "restarts must be an integer >= 1, received restarts=0"),
    ({"steps": 2.5}, "steps=2.5"),
    ({"momentum": 1.0}, "momentum=1.0"),
])
def test_bad_settings_name_the_value(generator_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _layer(generator_path, **kwargs)


def test_bad_generators_name_the_path_or_shape(tmp_path):
    with pytest.raises(ConfigError, match="generator_path '.*nope.keras' does not exist"):
        DefenseGANProjection(str(tmp_path / "nope.keras"))
    with pytest.raises(ConfigError, match="is a directory without generator.keras"):
        DefenseGANProjection(str(tmp_path))
    (tmp_path / "junk.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="cannot load the generator '.*junk.keras'"):
        DefenseGANProjection(str(tmp_path / "junk.keras"))
    classifier = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    classifier.save(tmp_path / "classifier.keras")
    with pytest.raises(ConfigError, match="is not a generator"):
        DefenseGANProjection(str(tmp_path / "classifier.keras"))
    _dense_generator(shape=(14, 14, 1)).save(tmp_path / "small.keras")
    layer = DefenseGANProjection(str(tmp_path / "small.keras"))
    with pytest.raises(ConfigError, match=r"makes images of shape \(14, 14, 1\), received inputs "
                                          r"of shape \(28, 28, 1\)"):
        keras.Sequential([keras.Input((28, 28, 1)), layer])
