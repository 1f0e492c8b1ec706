"""Properties of LS-PGA (Buckman et al., 2018) on a small thermometer-encoded MNIST CNN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks.ls_pga import image_for_levels, ls_pga
from at2l_tf.defenses import ThermometerEncoding, thermometer

LEVELS = 16
EPS = 0.3
NUM_TRAIN = 3000
BATCH = 32


@pytest.fixture(scope="module")
def thermometer_model(small_cnn, fit_on_mnist):
    """`(encoder, classifier)`: a CNN reading 16-level thermometer codes, trained ~1 s."""
    keras.utils.set_random_seed(0)
    encoder, classifier = ThermometerEncoding(LEVELS), small_cnn((28, 28, LEVELS))
    fit_on_mnist(keras.Sequential([keras.Input((28, 28, 1)), encoder, classifier]), NUM_TRAIN)
    return encoder, classifier


@pytest.fixture(scope="module")
def classifier_fn(thermometer_model):
    """The classifier behind the encoding: LS-PGA's `model_fn` (encoded input -> logits)."""
    _, classifier = thermometer_model
    return lambda z: classifier(z, training=False)


@pytest.fixture(scope="module")
def batch(mnist_arrays):
    images, labels = mnist_arrays
    return images[8000 : 8000 + BATCH], labels[8000 : 8000 + BATCH]


@pytest.fixture(scope="module")
def x_adv(classifier_fn, batch):
    x, y = batch
    return ls_pga(classifier_fn, x, y, eps=EPS, levels=LEVELS).numpy()


def _cross_entropy(classifier_fn, x, y):
    logits = classifier_fn(thermometer.thermometer_encode(tf.convert_to_tensor(x), LEVELS))
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits).numpy()


def test_eps_zero_returns_x(classifier_fn, batch):
    x, y = batch
    np.testing.assert_array_equal(ls_pga(classifier_fn, x, y, eps=0.0), x)


def test_inside_eps_ball_and_box(x_adv, batch):
    x, _ = batch
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_returns_the_closest_point_of_the_chosen_level(x_adv, batch):
    """Unchanged levels keep the pixel; a changed level puts it on the near edge of its bin."""
    x, _ = batch
    bins = thermometer.encode_levels(x_adv, LEVELS).numpy()
    clean_bins = thermometer.encode_levels(x, LEVELS).numpy()
    low, high = (b.numpy() for b in thermometer.level_bounds(bins, LEVELS))
    same = bins == clean_bins
    np.testing.assert_array_equal(x_adv[same], x[same])
    np.testing.assert_array_equal(x_adv[bins > clean_bins], low[bins > clean_bins])
    np.testing.assert_array_equal(x_adv[bins < clean_bins], high[bins < clean_bins])
    assert (~same).mean() > 0.1  # the attack did change many levels


@pytest.mark.parametrize("levels", [10, 16])
@pytest.mark.parametrize("eps", [0.05, 0.25])
def test_image_for_levels_encodes_to_the_levels(levels, eps):
    """Any reachable level choice decodes to an image with exactly that code, in the ball."""
    rng = np.random.default_rng(levels)
    # Pixel values on and next to bin edges, and at the box ends.
    grid = np.arange(levels + 1) / levels
    x = np.concatenate([grid, grid + 1e-7, grid - 1e-7, rng.uniform(size=200)])
    x = np.clip(x, 0.0, 1.0).astype(np.float32).reshape(1, -1, 1, 1)
    low, high = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
    first = thermometer.encode_levels(low, levels).numpy()
    last = thermometer.encode_levels(high, levels).numpy()
    bins = first + np.floor(rng.uniform(size=x.shape) * (last - first + 1)).astype(np.int32)
    out = image_for_levels(tf.constant(x), bins, levels, low, high).numpy()
    np.testing.assert_array_equal(thermometer.encode_levels(out, levels), bins)
    np.testing.assert_array_equal(
        ThermometerEncoding(levels)(out), thermometer.levels_to_thermometer(bins, levels)
    )
    assert np.max(np.abs(out - x)) <= eps + 1e-6
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_raises_the_loss_beyond_random_levels(classifier_fn, batch, x_adv):
    x, y = batch
    clean = _cross_entropy(classifier_fn, x, y).mean()
    # Baseline: a uniformly random reachable level per pixel (what the gradient must beat).
    x_random = ls_pga(classifier_fn, x, y, eps=EPS, steps=1, step_size=0.0, rand_init=True,
                      seed=0)
    random_levels = _cross_entropy(classifier_fn, x_random, y).mean()
    attacked = _cross_entropy(classifier_fn, x_adv, y).mean()
    assert attacked > clean + 1.0
    assert attacked > 2 * random_levels


def test_default_labels_are_the_predictions(classifier_fn, batch):
    x, _ = batch
    predicted = np.argmax(classifier_fn(thermometer.thermometer_encode(x, LEVELS)), axis=-1)
    np.testing.assert_array_equal(
        ls_pga(classifier_fn, x, eps=0.1, steps=2), ls_pga(classifier_fn, x, predicted, eps=0.1,
                                                            steps=2)
    )


def test_runs_inside_tf_function(classifier_fn, batch):
    x, y = batch
    params = dict(eps=0.1, steps=3, step_size=0.5, rand_init=True, seed=3)

    @tf.function
    def attack(images, labels):
        return ls_pga(classifier_fn, images, labels, **params)

    np.testing.assert_allclose(attack(x, y), ls_pga(classifier_fn, x, y, **params), atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-0.1), "eps must be >= 0"),
        (dict(eps=0.1, levels=1), "levels must be an integer >= 2"),
        (dict(eps=0.1, steps=0), "steps must be an integer >= 1"),
        (dict(eps=0.1, step_size=-1.0), "step_size must be >= 0"),
        (dict(eps=0.1, temperature=0.0), "temperature must be > 0"),
        (dict(eps=0.1, anneal=0.0), "anneal must be > 0"),
        (dict(eps=0.1, clip_min=1.0, clip_max=0.0), "clip_min must be < clip_max"),
        (dict(eps=0.1, seed=1.5), "seed must be an integer or None"),
    ],
)
def test_bad_arguments_rejected(classifier_fn, batch, kwargs, match):
    x, y = batch
    with pytest.raises(ValueError, match=match):
        ls_pga(classifier_fn, x, y, **kwargs)
