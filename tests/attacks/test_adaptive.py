"""The adaptive attacks: BPDA on a thermometer-encoded model, EOT on a randomized one.

Two small MNIST CNNs are trained for ~1-2 s each (no adversarial training): one
reading a 16-level thermometer code, one behind `RandomResizePad`. The tests
compare attacks on them, never pin the models' numbers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks import pgd
from at2l_tf.attacks.bpda import bpda_model_fn
from at2l_tf.attacks.eot import eot_model_fn
from at2l_tf.defenses import RandomResizePad, ThermometerEncoding

NUM_TRAIN = 4000
BATCH = 64
BPDA_EPS = 0.3
EOT_EPS = 0.15  # where single-draw PGD leaves part of the batch, so the two can differ
STEPS = 10


@pytest.fixture(scope="module")
def batch(mnist_arrays):
    images, labels = mnist_arrays
    return images[8000 : 8000 + BATCH], labels[8000 : 8000 + BATCH]


@pytest.fixture(scope="module")
def thermometer_model(small_cnn, fit_on_mnist):
    """`(encoder, classifier, full_model)`, thermometer code → CNN."""
    keras.utils.set_random_seed(0)
    encoder, classifier = ThermometerEncoding(16), small_cnn((28, 28, 16))
    full = keras.Sequential([keras.Input((28, 28, 1)), encoder, classifier])
    return encoder, classifier, fit_on_mnist(full, NUM_TRAIN)


@pytest.fixture(scope="module")
def randomized_model(small_cnn, fit_on_mnist):
    """`RandomResizePad` (28 → [28, 32) → 32) → CNN; random in training and inference."""
    keras.utils.set_random_seed(0)
    full = keras.Sequential([keras.Input((28, 28, 1)), RandomResizePad(seed=0), small_cnn((32, 32, 1))])
    return fit_on_mnist(full, NUM_TRAIN)


def _accuracy(model_fn, x, y, draws=1):
    x = tf.convert_to_tensor(x)
    return float(np.mean([np.argmax(model_fn(x), -1) == y for _ in range(draws)]))


def _mean_cross_entropy(model_fn, x, y, draws=1):
    x = tf.convert_to_tensor(x)
    return float(np.mean([
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))
        for _ in range(draws)
    ]))


# --- BPDA ---------------------------------------------------------------------------


def test_bpda_forward_is_the_exact_model(thermometer_model, batch):
    encoder, classifier, full = thermometer_model
    x, _ = batch
    fn = bpda_model_fn(lambda z: classifier(z, training=False), encoder)
    np.testing.assert_allclose(fn(x), full(x, training=False), atol=1e-5)


def test_plain_gradient_of_thermometer_model_is_zero(thermometer_model, batch):
    _, _, full = thermometer_model
    x, y = batch
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(full(x, training=False), y)
    np.testing.assert_array_equal(tape.gradient(loss, x), 0.0)


def _loss(logits, y):
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def test_bpda_defeats_thermometer_encoding_where_pgd_fails(thermometer_model, batch):
    encoder, classifier, full = thermometer_model
    x, y = batch
    full_fn = lambda v: full(v, training=False)
    keras.utils.set_random_seed(1)
    x_plain = pgd(full_fn, x, y, eps=BPDA_EPS, steps=STEPS)
    x_bpda = pgd(bpda_model_fn(lambda z: classifier(z, training=False), encoder), x, y,
                 eps=BPDA_EPS, steps=STEPS)
    for x_adv in (x_plain, x_bpda):
        assert np.max(np.abs(x_adv - x)) <= BPDA_EPS + 1e-6
        assert np.min(x_adv) >= 0.0 and np.max(x_adv) <= 1.0
    clean, plain, bpda = (_accuracy(full_fn, v, y) for v in (x, x_plain, x_bpda))
    # Plain PGD only has its random start (zero gradients): accuracy stays high.
    assert plain > 0.5 * clean
    assert bpda <= 0.2
    assert plain - bpda >= 0.4


def test_identity_bpda_for_layers_without_bpda():
    """A shape-preserving layer without `bpda` back-propagates as the identity."""
    quantize = keras.layers.Lambda(lambda v: tf.round(v * 4.0) / 4.0)
    weights = tf.constant(np.arange(6, dtype=np.float32).reshape(1, 6))
    x = tf.constant(np.random.default_rng(0).uniform(size=(2, 6)).astype(np.float32))
    fn = bpda_model_fn(lambda z: z * weights, quantize)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
        total = tf.reduce_sum(out)
    np.testing.assert_allclose(out, quantize(x) * weights)
    np.testing.assert_allclose(tape.gradient(total, x), np.broadcast_to(weights, x.shape))


def test_surrogate_gives_the_backward_pass():
    layer = keras.layers.Lambda(lambda v: tf.round(v * 4.0) / 4.0)
    x = tf.constant([[0.1, 0.6]])
    fn = bpda_model_fn(lambda z: z, layer, surrogate=lambda v: 3.0 * v)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
        total = tf.reduce_sum(out)
    np.testing.assert_allclose(out, [[0.0, 0.5]])
    np.testing.assert_allclose(tape.gradient(total, x), [[3.0, 3.0]])


def test_shape_changing_layer_without_bpda_rejected():
    class NoBpda:  # a thermometer code without its surrogate
        name = "plain_thermometer"

        def __call__(self, v):
            return ThermometerEncoding(4)(v)

    fn = bpda_model_fn(lambda z: z, NoBpda())
    with pytest.raises(ValueError, match="'plain_thermometer' has no `bpda` method"):
        fn(tf.zeros((1, 2, 2, 1)))
    with pytest.raises(TypeError, match="layer must be callable"):
        bpda_model_fn(lambda z: z, 3)


# --- EOT ----------------------------------------------------------------------------


def test_eot_at_least_as_strong_as_single_draw_pgd(randomized_model, batch):
    x, y = batch
    fn = lambda v: randomized_model(v, training=False)
    keras.utils.set_random_seed(2)
    x_pgd = pgd(fn, x, y, eps=EOT_EPS, steps=STEPS)
    x_eot = pgd(eot_model_fn(fn, draws=8), x, y, eps=EOT_EPS, steps=STEPS)
    assert np.max(np.abs(x_eot - x)) <= EOT_EPS + 1e-6
    assert np.min(x_eot) >= 0.0 and np.max(x_eot) <= 1.0
    # Judged on the real randomized model, 10 fresh draws each. The attacks and
    # the judge see different random draws, so on 64 images results move by a few
    # points by chance alone (measured with three attack seeds: single-draw PGD
    # 10-12%, EOT 8%; mean loss 5.8 vs 6.1-6.3). EOT may not come out more than 5
    # points weaker, nor its loss more than 5% lower.
    clean = _accuracy(fn, x, y, draws=10)
    acc_pgd, acc_eot = _accuracy(fn, x_pgd, y, 10), _accuracy(fn, x_eot, y, 10)
    assert acc_pgd < clean - 0.3  # the attacks work at this eps
    assert acc_eot <= acc_pgd + 0.05
    assert _mean_cross_entropy(fn, x_eot, y, 10) >= 0.95 * _mean_cross_entropy(fn, x_pgd, y, 10)


def _input_gradient(model_fn, x, y):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(model_fn(x), y)
    return tape.gradient(loss, x).numpy().ravel()


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_eot_gradient_is_closer_to_the_expected_gradient(randomized_model, batch):
    """Averaging draws reduces the variance of the gradient of the randomized model."""
    x, y = batch[0][:16], batch[1][:16]
    fn = lambda v: randomized_model(v, training=False)
    reference = _input_gradient(eot_model_fn(fn, draws=128), x, y)
    single = np.mean([_cosine(_input_gradient(fn, x, y), reference) for _ in range(4)])
    eot = np.mean([_cosine(_input_gradient(eot_model_fn(fn, 16), x, y), reference)
                   for _ in range(4)])
    # Measured: cosine ~0.66 for one draw, ~0.96 for 16.
    assert eot > single + 0.2


@pytest.mark.parametrize("batch_draws", [True, False])
def test_eot_averages_draws(batch_draws):
    dense = keras.layers.Dense(3, kernel_initializer="ones")
    noisy = lambda v: dense(v) + tf.random.normal((tf.shape(v)[0], 3))
    x = tf.ones((500, 2))
    fn = eot_model_fn(noisy, draws=16, batch_draws=batch_draws)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
        total = tf.reduce_sum(out)
    assert out.shape == (500, 3)
    # Mean 2 (dense of ones), noise std 1/sqrt(16) = 0.25.
    assert abs(float(tf.reduce_mean(out)) - 2.0) < 0.05
    assert 0.2 < float(tf.math.reduce_std(out)) < 0.3
    np.testing.assert_allclose(tape.gradient(total, x), 3.0, rtol=1e-5)
    traced = tf.function(fn)(x)
    assert traced.shape == (500, 3)


@pytest.mark.parametrize("draws", [0, -1, 2.5])
def test_eot_draws_validated(draws):
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        eot_model_fn(lambda v: v, draws=draws)
