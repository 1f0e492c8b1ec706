"""Shared fixtures of the attack tests: one small MNIST CNN, trained once per session.

The model is trained for a few seconds on the first 8,000 images of the MNIST
test split (the copy shipped with the package) and attacked on held-out images
it classifies correctly. Tests check properties of the attacks, never the
model's numbers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import data
from at2l_tf.attacks import fgsm

NUM_TRAIN = 8000
BATCH = 32
# FGSM radii tried, smallest first, to find each example's cheapest FGSM
# adversarial (the L2 baseline of the minimal-norm attacks).
FGSM_EPS_GRID = tuple(np.round(np.arange(0.02, 0.42, 0.02), 2))


def _l2_norms(x_adv, x):
    """Per-example `||x_adv - x||_2`."""
    diff = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    return np.sqrt(np.sum(diff**2, axis=tuple(range(1, diff.ndim))))


@pytest.fixture(scope="session")
def l2_norms():
    """`l2_norms(x_adv, x)`: per-example L2 norms of the perturbation, as NumPy."""
    return _l2_norms


@pytest.fixture(scope="session")
def mnist_arrays():
    """MNIST test split as float32 images in [0, 1] `(10000, 28, 28, 1)` and int labels."""
    images, labels = data.load_mnist_arrays("test")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _small_cnn(input_shape):
    """The suite's small CNN returning logits, for inputs of `input_shape`."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def _fit(model, images, labels, num_train):
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images[:num_train], labels[:num_train], batch_size=64, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="session")
def small_cnn():
    """`small_cnn(input_shape)`: a fresh, untrained copy of the suite's small CNN."""
    return _small_cnn


@pytest.fixture(scope="session")
def fit_on_mnist(mnist_arrays):
    """`fit(model, num_train)`: compiles `model` (Adam 3e-3, CE on logits) and
    trains it 2 epochs on the first `num_train` test-split images."""
    images, labels = mnist_arrays
    return lambda model, num_train=NUM_TRAIN: _fit(model, images, labels, num_train)


@pytest.fixture(scope="session")
def classifier(mnist_arrays):
    """A small CNN returning logits (~94% held-out accuracy), trained once (~3 s)."""
    images, labels = mnist_arrays
    keras.utils.set_random_seed(0)
    return _fit(_small_cnn((28, 28, 1)), images, labels, NUM_TRAIN)


@pytest.fixture(scope="session")
def model_fn(classifier):
    """Logits of the classifier in inference mode, as the attacks expect."""

    def fn(x):
        return classifier(x, training=False)

    return fn


@pytest.fixture(scope="session")
def predict(model_fn):
    """Predicted classes as a NumPy array."""

    def fn(x):
        return np.argmax(model_fn(tf.convert_to_tensor(x)), axis=-1)

    return fn


@pytest.fixture(scope="session")
def clean_batch(mnist_arrays, predict):
    """`BATCH` held-out images the classifier gets right, and their labels."""
    images, labels = mnist_arrays
    x, y = images[NUM_TRAIN : NUM_TRAIN + 4 * BATCH], labels[NUM_TRAIN : NUM_TRAIN + 4 * BATCH]
    correct = predict(x) == y
    assert correct.sum() >= BATCH
    return x[correct][:BATCH], y[correct][:BATCH]


@pytest.fixture(scope="session")
def fgsm_min_l2(model_fn, predict, clean_batch):
    """Per example of `clean_batch`, the L2 norm of FGSM at the smallest eps of
    `FGSM_EPS_GRID` that fools the model; NaN where no eps does."""
    x, y = clean_batch
    norms = np.full(len(x), np.nan)
    for eps in FGSM_EPS_GRID:
        x_adv = np.asarray(fgsm(model_fn, x, y, eps=float(eps)))
        fooled = (predict(x_adv) != y) & np.isnan(norms)
        norms[fooled] = _l2_norms(x_adv, x)[fooled]
    return norms
