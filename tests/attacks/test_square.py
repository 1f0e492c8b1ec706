"""Properties of the L-inf Square attack on the small MNIST CNN of conftest.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf.attacks.square import _p_selection, _square_side, square

EPS = 0.3
QUERIES = 200


@pytest.fixture(scope="module")
def score_only_fn(model_fn):
    """Logits with `tf.stop_gradient`: the attack gets no gradient through them."""

    def fn(x):
        return tf.stop_gradient(model_fn(x))

    return fn


@pytest.fixture(scope="module")
def adversarial(score_only_fn, clean_batch):
    x, y = clean_batch
    return np.asarray(square(score_only_fn, x, y, eps=EPS, queries=QUERIES, seed=0))


def test_eps_zero_returns_x(model_fn, clean_batch):
    x, y = clean_batch
    np.testing.assert_array_equal(np.asarray(square(model_fn, x, y, eps=0.0, seed=0)), x)


def test_output_in_eps_ball_and_box_with_shape_and_dtype(adversarial, clean_batch):
    x, _ = clean_batch
    assert adversarial.shape == x.shape and adversarial.dtype == x.dtype
    assert np.max(np.abs(adversarial - x)) <= EPS + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


def test_fools_a_clean_model_without_gradients(score_only_fn, adversarial, clean_batch, predict):
    x, y = clean_batch
    x_t = tf.convert_to_tensor(x[:2])
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        loss = tf.reduce_sum(score_only_fn(x_t))
    assert tape.gradient(loss, x_t) is None  # the model_fn really gives no gradient
    # clean_batch is classified correctly; a few hundred queries fool most of it.
    assert np.mean(predict(adversarial) == y) <= 0.2


def test_same_seed_same_output_other_seed_differs(score_only_fn, adversarial, clean_batch):
    x, y = clean_batch
    again = np.asarray(square(score_only_fn, x, y, eps=EPS, queries=QUERIES, seed=0))
    np.testing.assert_array_equal(again, adversarial)
    other = np.asarray(square(score_only_fn, x, y, eps=EPS, queries=QUERIES, seed=1))
    assert not np.array_equal(other, adversarial)


def test_global_seed_makes_unseeded_runs_repeatable(score_only_fn, clean_batch):
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        runs.append(np.asarray(square(score_only_fn, x, y, eps=0.1, queries=5)))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_misclassified_examples_are_returned_unchanged(score_only_fn, clean_batch):
    # Wrong labels for the first half: those examples are "fooled" from the start.
    x, y = clean_batch[0][:8], clean_batch[1][:8].copy()
    y[:4] = (y[:4] + 1) % 10
    x_adv = np.asarray(square(score_only_fn, x, y, eps=EPS, queries=QUERIES, seed=0))
    np.testing.assert_array_equal(x_adv[:4], x[:4])
    assert not np.array_equal(x_adv[4:], x[4:])


def test_fooled_examples_stop_querying_and_the_loop_ends_early(model_fn, clean_batch, predict):
    x, y = clean_batch
    calls = tf.Variable(0, dtype=tf.int64)
    images = tf.Variable(0, dtype=tf.int64)

    def counting_fn(z):
        calls.assign_add(1)
        images.assign_add(tf.cast(tf.shape(z)[0], tf.int64))
        return model_fn(z)

    queries = 2000
    x_adv = np.asarray(square(counting_fn, x, y, eps=EPS, queries=queries, seed=0))
    assert np.all(predict(x_adv) != y)
    # Clean check + stripes + one call per iteration: all fooled long before the budget.
    assert int(calls.numpy()) < queries // 4
    # Each iteration queries only the examples not yet fooled.
    assert int(images.numpy()) < (int(calls.numpy()) - 2) * len(x)


def test_one_query_gives_vertical_stripes(score_only_fn, clean_batch):
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    eps = 0.1
    x_adv = np.asarray(square(score_only_fn, x, y, eps=eps, queries=1, seed=0))
    up = x_adv == np.minimum(x + np.float32(eps), 1.0)
    down = x_adv == np.maximum(x - np.float32(eps), 0.0)
    assert np.all(up | down)
    # One sign per (example, column, channel): every column is all up or all down.
    assert np.all(up.all(axis=1) | down.all(axis=1))


def test_runs_inside_tf_function(score_only_fn, clean_batch):
    x, y = clean_batch[0][:4], clean_batch[1][:4]

    @tf.function
    def attack(images, labels):
        return square(score_only_fn, images, labels, eps=EPS, queries=20, seed=0)

    x_adv = attack(tf.constant(x), tf.constant(y)).numpy()
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"eps": -1}, ValueError, r"eps=-1"),
        ({"queries": 0}, ValueError, r"queries=0"),
        ({"p_init": 0}, ValueError, r"p_init=0"),
        ({"p_init": 1.5}, ValueError, r"p_init=1\.5"),
        ({"p_init": "0.8"}, TypeError, r"p_init='0\.8'"),
        ({"clip_min": 1.0, "clip_max": 0.0}, ValueError, r"clip_min=1\.0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(params, error, message, model_fn, clean_batch):
    x, y = clean_batch
    params = {"eps": EPS, **params}
    with pytest.raises(error, match=message):
        square(model_fn, x, y, **params)


@pytest.mark.parametrize(
    "it, queries, expected",
    [
        # Breakpoints of the published schedule (10,000 queries): p halves after
        # iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
        (0, 10000, 0.8),
        (10, 10000, 0.8),
        (11, 10000, 0.4),
        (50, 10000, 0.4),
        (51, 10000, 0.2),
        (201, 10000, 0.1),
        (501, 10000, 0.05),
        (1001, 10000, 0.025),
        (2001, 10000, 0.8 / 64),
        (4001, 10000, 0.8 / 128),
        (6001, 10000, 0.8 / 256),
        (9999, 10000, 0.8 / 512),
        # Rescaled to 5,000 queries as int(it / queries * 10000).
        (5, 5000, 0.8),
        (6, 5000, 0.4),
        (2500, 5000, 0.8 / 128),
        (4999, 5000, 0.8 / 512),
    ],
)
def test_p_schedule_matches_the_published_values(it, queries, expected):
    assert _p_selection(0.8, it, queries) == pytest.approx(expected)


def test_square_side():
    assert _square_side(0.8, 28, 28) == 25  # round(sqrt(0.8 * 784))
    assert _square_side(0.8 / 512, 28, 28) == 1
    assert _square_side(1.0, 28, 28) == 28
    assert _square_side(1.0, 8, 32) == 8  # never wider than the image
