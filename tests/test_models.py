import keras
import numpy as np
import pytest

from at2l_tf import data, models
from at2l_tf.errors import ConfigError


@pytest.mark.parametrize("name", models.available_models())
def test_every_model_builds_and_returns_logits(name):
    entry = models.get_entry(name)
    spec = data.get_spec(entry.dataset)
    model = models.get_model(name)
    x = np.random.default_rng(0).uniform(size=(3,) + spec.image_shape).astype("float32")
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (3, spec.num_classes)
    # Logits, not probabilities: no softmax at the end.
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)
    assert model.layers[-1].get_config().get("activation") in (None, "linear")


def test_cats_vs_dogs_model_follows_image_size():
    model = models.get_model("cats_vs_dogs_cnn", input_shape=(96, 96, 3))
    assert model.input_shape == (None, 96, 96, 3) and model.output_shape == (None, 2)


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet1000'.*mnist_small"):
        models.get_model("resnet1000")


def test_small_cnn_learns_real_mnist_in_one_short_epoch():
    keras.utils.set_random_seed(0)
    train = data.make_pipeline(
        data.load("mnist", "train", max_examples=20000), batch_size=128, shuffle=True, seed=0
    )
    test = data.make_pipeline(data.load("mnist", "test"), batch_size=1000)
    model = models.get_model("mnist_small")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=1, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    assert accuracy > 0.95


def test_wide_silu_model_has_its_stated_size_and_trains_one_trades_step_in_bfloat16():
    import tensorflow as tf

    from at2l_tf import precision
    from at2l_tf.training import AT2LModel

    model = models.get_model("mnist_wide_silu")
    assert model.count_params() == 1_313_226  # As stated in its docstring and the README.
    assert {l.get_config().get("activation") for l in model.layers[1:-1]} >= {"silu"}
    keras.utils.set_random_seed(0)
    with precision.policy_scope("mixed_bfloat16"):
        clf = models.get_model("mnist_wide_silu")
    assert precision.policies_of(clf) >= {"mixed_bfloat16"}
    trainer = AT2LModel(clf, objective="trades", attack="pgd", attack_params={"eps": 0.3, "steps": 2})
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = data.load_mnist_arrays("validation")
    ds = tf.data.Dataset.from_tensor_slices((x[:16].astype("float32") / 255.0, y[:16])).batch(16)
    before = [w.copy() for w in clf.get_weights()]
    history = trainer.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert all(w.dtype == np.float32 for w in clf.get_weights())
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, clf.get_weights()))
