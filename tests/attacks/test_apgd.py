"""APGD (CE, DLR, targeted DLR) and AutoAttack: losses, schedule, bounds, strength."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks
from at2l_tf.attacks import apgd
# The functions: the package re-exports `autoattack` under its module's name.
from at2l_tf.attacks.autoattack import autoattack, autoattack_stages

EPS = 0.1
STEPS = 10
APGD = ("apgd_ce", "apgd_dlr", "apgd_t")


def _accuracy(model_fn, x, y):
    return float(np.mean(np.argmax(model_fn(tf.convert_to_tensor(x)), axis=-1) == y))


def _correct(model_fn, x, y):
    return np.argmax(model_fn(tf.convert_to_tensor(x)), axis=-1) == y


# ------------------------------------------------------------------ losses and schedule


def test_dlr_loss_equals_a_hand_computation():
    z = np.array([[3.0, 1.0, 0.5, -1.0], [0.0, 4.0, 2.0, 1.0]], np.float32)
    y = np.array([0, 2])
    # Example 0 is right: -(3 - 1) / (3 - 0.5). Example 1 is wrong: -(2 - 4) / (4 - 1).
    expected = [-(3 - 1) / (3 - 0.5), -(2 - 4) / (4 - 1)]
    np.testing.assert_allclose(apgd.dlr_loss(z, y).numpy(), expected, rtol=1e-6)


def test_targeted_dlr_loss_equals_a_hand_computation():
    z = np.array([[3.0, 1.0, 0.5, -1.0, -2.0]], np.float32)
    y, t = np.array([0]), np.array([3])
    # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2): π3 = 0.5, π4 = -1.
    expected = -(3 - (-1)) / (3 - (0.5 + -1.0) / 2)
    np.testing.assert_allclose(apgd.targeted_dlr_loss(z, y, t).numpy(), [expected], rtol=1e-6)


def test_dlr_losses_are_invariant_to_shifting_and_scaling_the_logits():
    z = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    y, t = np.arange(6), np.arange(6)[::-1] + 4
    for loss in (lambda z: apgd.dlr_loss(z, y), lambda z: apgd.targeted_dlr_loss(z, y, t)):
        np.testing.assert_allclose(loss(z).numpy(), loss(7.0 * z - 3.0).numpy(), rtol=1e-4)


def test_dlr_losses_refuse_too_few_classes():
    with pytest.raises(ValueError, match="needs >= 3 classes, received 2"):
        apgd.dlr_loss(np.zeros((1, 2), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="needs >= 4 classes, received 3"):
        apgd.targeted_dlr_loss(np.zeros((1, 3), np.float32), np.array([0]), np.array([1]))


def test_checkpoint_schedule_for_100_iterations_is_the_published_one():
    # Croce & Hein (2020): p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert [w for w, _ in apgd.checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert [k for _, k in apgd.checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def test_checkpoint_schedule_of_short_runs_stays_inside_the_run():
    for steps in (1, 2, 5, 10, 37):
        points = [w for w, _ in apgd.checkpoints(steps)]
        assert points == sorted(set(points)) and all(1 <= w <= steps for w in points)


# ------------------------------------------------------------------ step size and restarts


def _scripted_loss_model(losses, signs):
    """A 2-class model whose cross-entropy on label 1 follows a script, call by call.

    Call `t` (0: the random start, t: iteration t) gives logits
    `[c_t + 0.01 * sign_t * mean(z), 0]`, so CE(z, 1) = softplus(c_t + ...):
    the loss is `losses[t]` up to ±0.006 whatever the point, and the gradient's
    sign, `signs[t]`, moves the iterate up or down. `c_t < 0`: never fooled.
    """
    counter = tf.Variable(0, dtype=tf.int32)
    # c_t with softplus(c_t) = losses[t].
    c = tf.constant(np.log(np.expm1(np.asarray(losses, np.float64))), tf.float32)
    sign = tf.constant(signs, tf.float32)

    def model_fn(z):
        t = counter.assign_add(1) - 1
        m = tf.reduce_mean(z, axis=[1, 2, 3])
        first = tf.gather(c, t) + 0.01 * tf.gather(sign, t) * m
        return tf.stack([first, tf.zeros_like(m)], axis=1)

    return model_fn


def _states(losses, steps, eps=0.1):
    assert len(losses) == steps + 1 and max(losses) < np.log(2)  # Label 1 stays predicted.
    signs = [1.0 if t % 2 else -1.0 for t in range(steps + 1)]
    x = np.full((1, 2, 2, 1), 0.5, np.float32)
    y = np.array([1])
    params = dict(loss="ce", eps=eps, steps=steps, rho=apgd.RHO, clip_min=0.0, clip_max=1.0,
                  seed=0)
    states = list(apgd._iterations(_scripted_loss_model(losses, signs), x, y, y, 0, params))
    for t, s in enumerate(states):  # The script is what the attack saw.
        assert int(s["i"]) == t and abs(float(s["loss_prev"][0]) - losses[t]) < 0.01
        assert not bool(s["fooled"][0])
    return [{k: np.asarray(v) for k, v in s.items()} for s in states]


def test_a_stalling_loss_halves_eta_at_the_checkpoint_and_restarts_from_the_best_point():
    steps, eps = 20, 0.1
    (w, interval), *_ = apgd.checkpoints(steps)
    assert (w, interval) == (4, 4)  # Condition 1 fires with fewer than 0.75 * 4 rises.
    # Up for two iterations, then down: 2 rises in the interval, the best at iteration 2.
    losses = [0.3, 0.45, 0.6, 0.55, 0.5] + [0.5 - 0.02 * k for k in range(1, steps - 3)]
    states = _states(losses, steps, eps)
    for t in range(w):
        assert states[t]["eta"][0] == pytest.approx(2 * eps), t  # eta_0 = 2 eps until then.
    assert states[w]["eta"][0] == pytest.approx(eps)  # Halved at the checkpoint...
    # ...and the next step starts from the best point, with its gradient.
    best = states[2]
    assert not np.array_equal(best["x_adv"], states[w - 1]["x_adv"])  # The points differ.
    np.testing.assert_array_equal(states[w]["x_adv"], best["x_adv"])
    np.testing.assert_array_equal(states[w]["grad"], best["grad"])
    np.testing.assert_array_equal(states[w]["x_best"], best["x_adv"])
    # The loss falls through the next interval too: halved again at its end.
    w2, _ = apgd.checkpoints(steps)[1]
    assert states[w2 - 1]["eta"][0] == pytest.approx(eps)
    assert states[w2]["eta"][0] == pytest.approx(eps / 2)


def test_a_loss_that_rises_but_stays_below_its_best_halves_at_the_next_checkpoint():
    # Condition 2: eta was not halved at the last checkpoint and the best loss
    # has not improved since, although the loss rose in every step of the interval.
    steps, eps = 20, 0.1
    (w1, _), (w2, k2), *_ = apgd.checkpoints(steps)
    assert (w1, w2, k2) == (4, 7, 3)
    # Interval 1: 3 rises of 4 (no condition 1), the best at iteration 3.
    # Interval 2: 3 rises of 3, all below that best.
    losses = [0.1, 0.2, 0.3, 0.6, 0.1, 0.2, 0.3, 0.4] + [0.5] * (steps - 7)
    states = _states(losses, steps, eps)
    assert states[w1]["eta"][0] == pytest.approx(2 * eps)  # Not halved at the first checkpoint.
    assert states[w2]["eta"][0] == pytest.approx(eps)  # Halved at the second,
    np.testing.assert_array_equal(states[w2]["x_adv"], states[3]["x_adv"])  # from the best.


def test_a_loss_that_keeps_rising_keeps_its_step_size_and_its_path():
    steps, eps = 20, 0.1
    losses = list(np.linspace(0.05, 0.6, steps + 1))
    states = _states(losses, steps, eps)
    for t, s in enumerate(states):
        assert s["eta"][0] == pytest.approx(2 * eps), t  # Never halved.
        np.testing.assert_array_equal(s["x_best"], s["x_adv"])  # Every iterate is the best.
    assert len(apgd.checkpoints(steps)) > 3  # Several checkpoints were passed.


# ------------------------------------------------------------------ bounds and arguments


@pytest.fixture(scope="module")
def adversarials(model_fn, clean_batch):
    x, y = clean_batch
    return {name: np.asarray(attacks.get_attack(name)(model_fn, x, y, eps=EPS, steps=STEPS))
            for name in APGD}


@pytest.mark.parametrize("name", APGD)
def test_output_stays_in_the_eps_ball_and_the_box(name, adversarials, clean_batch):
    x, _ = clean_batch
    x_adv = adversarials[name]
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


@pytest.mark.parametrize("name", APGD)
def test_apgd_lowers_accuracy(name, adversarials, model_fn, clean_batch):
    x, y = clean_batch  # All correctly classified.
    assert _accuracy(model_fn, adversarials[name], y) < 0.8


@pytest.mark.parametrize("name", APGD)
def test_eps_zero_returns_x(name, model_fn, clean_batch):
    x, y = clean_batch
    np.testing.assert_array_equal(attacks.get_attack(name)(model_fn, x, y, eps=0.0), x)


@pytest.mark.parametrize("name", APGD)
def test_same_seed_same_output(name, model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    fn = attacks.get_attack(name)
    a = fn(model_fn, x, y, eps=EPS, steps=3, seed=1)
    b = fn(model_fn, x, y, eps=EPS, steps=3, seed=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps must be >= 0, received eps=-0.1"),
        ({"eps": 0.1, "steps": 0}, "steps must be an integer >= 1, received steps=0"),
        ({"eps": 0.1, "restarts": 0}, "restarts must be an integer >= 1, received restarts=0"),
        ({"eps": 0.1, "rho": 0.0}, r"rho must be in \(0, 1\], received rho=0.0"),
        ({"eps": 0.1, "target_classes": 10}, "target_classes must be <= num_classes - 1 = 9"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match, model_fn, clean_batch):
    x, y = clean_batch[0][:2], clean_batch[1][:2]
    with pytest.raises(ValueError, match=match):
        apgd.apgd_t(model_fn, x, y, **kwargs)


def test_misclassified_examples_are_left_as_they_are(model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    wrong = (y + 1) % 10  # Labels the model disagrees with: every example counts as fooled.
    np.testing.assert_array_equal(apgd.apgd_ce(model_fn, x, wrong, eps=EPS, steps=3), x)


@pytest.mark.parametrize("target_classes, restarts", [(3, 1), (5, 2)])
def test_targeted_version_runs_each_target_on_the_ranked_classes(
    target_classes, restarts, model_fn, clean_batch, monkeypatch
):
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    seen = []
    real = apgd._eager_run

    def recording(model_fn, x, y, target, run, params):
        seen.append((np.asarray(target), int(run), int(x.shape[0])))
        return real(model_fn, x, y, target, run, params)

    monkeypatch.setattr(apgd, "_eager_run", recording)
    # eps this small fools nothing, so every run sees every example.
    apgd.apgd_t(model_fn, x, y, eps=1e-6, steps=2, target_classes=target_classes,
                restarts=restarts)
    assert len(seen) == target_classes * restarts
    assert [r for _, r, _ in seen] == list(range(target_classes * restarts))  # Fresh starts.
    assert all(n == 4 for _, _, n in seen)
    ranked = np.argsort(-model_fn(tf.convert_to_tensor(x)).numpy(), axis=1)
    for j in range(target_classes):
        for r in range(restarts):
            np.testing.assert_array_equal(seen[j * restarts + r][0], ranked[:, j + 1])


def test_restarts_run_only_on_the_examples_not_yet_fooled(model_fn, clean_batch, monkeypatch):
    x, y = clean_batch
    sizes = []
    real = apgd._eager_run

    def recording(model_fn, x, y, target, run, params):
        sizes.append(int(x.shape[0]))
        return real(model_fn, x, y, target, run, params)

    monkeypatch.setattr(apgd, "_eager_run", recording)
    x_adv = apgd.apgd_ce(model_fn, x, y, eps=EPS, steps=STEPS, restarts=3)
    fooled = int((~_correct(model_fn, x_adv, y)).sum())
    assert sizes[0] == len(x) and fooled > 0
    assert sizes[1] <= len(x) - 1 and sizes == sorted(sizes, reverse=True)
    assert sizes[-1] >= len(x) - fooled


def test_runs_inside_tf_function(model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    graph = tf.function(lambda x, y: apgd.apgd_ce(model_fn, x, y, eps=EPS, steps=4, restarts=2))
    x_adv = graph(tf.constant(x), tf.constant(y)).numpy()
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6


# ------------------------------------------------------------------ strength


@pytest.fixture(scope="module")
def robust_model(mnist_arrays):
    """A small CNN adversarially trained for a few seconds (PGD-3 at eps 0.1)."""
    from at2l_tf.training import AT2LModel

    images, labels = mnist_arrays
    keras.utils.set_random_seed(0)
    clf = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model = AT2LModel(clf, objective="at", attack="pgd", attack_params={"eps": EPS, "steps": 3})
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(images[:6000], labels[:6000], batch_size=64, epochs=2, verbose=0)
    return lambda z: clf(z, training=False)


def test_apgd_ce_leaves_no_more_correct_examples_than_pgd_40(robust_model, mnist_arrays):
    images, labels = mnist_arrays
    x, y = images[8000:8256], labels[8000:8256]
    keras.utils.set_random_seed(0)
    pgd = attacks.pgd(robust_model, x, y, eps=EPS, steps=40, step_size=0.01)
    ours = apgd.apgd_ce(robust_model, x, y, eps=EPS, steps=40)
    clean = _accuracy(robust_model, x, y)
    pgd_acc, apgd_acc = _accuracy(robust_model, pgd, y), _accuracy(robust_model, ours, y)
    assert 0.2 < pgd_acc < clean  # The model is somewhat robust, and PGD does something.
    assert apgd_acc <= pgd_acc


def test_autoattack_is_at_least_as_strong_as_its_first_attack(robust_model, mnist_arrays):
    images, labels = mnist_arrays
    x, y = images[8000:8128], labels[8000:8128]
    ce = apgd.apgd_ce(robust_model, x, y, eps=EPS, steps=10)
    fast = autoattack(robust_model, x, y, eps=EPS, version="fast", steps=10)
    both = _correct(robust_model, fast, y)
    # Same seed and subset: the first stage is exactly apgd_ce, so nothing it fools survives.
    assert not (both & ~_correct(robust_model, ce, y)).any()
    assert both.mean() <= _correct(robust_model, ce, y).mean()
    assert np.max(np.abs(np.asarray(fast) - x)) <= EPS + 1e-6


# ------------------------------------------------------------------ AutoAttack


def test_autoattack_stages_by_version_and_number_of_classes():
    assert autoattack_stages("standard", 10) == ["apgd_ce", "apgd_t", "square"]
    assert autoattack_stages("fast", 10) == ["apgd_ce", "apgd_t"]
    assert autoattack_stages("standard", 3) == ["apgd_ce", "apgd_dlr", "square"]
    assert autoattack_stages("fast", 2) == ["apgd_ce"]
    with pytest.raises(ValueError, match="version must be one of standard, fast, received version='plus'"):
        autoattack_stages("plus", 10)


def test_autoattack_standard_runs_square_on_what_apgd_left(model_fn, clean_batch):
    x, y = clean_batch[0][:16], clean_batch[1][:16]
    x_adv = np.asarray(autoattack(model_fn, x, y, eps=0.02, steps=2, queries=30))
    assert np.max(np.abs(x_adv - x)) <= 0.02 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_fooled_is_what_the_target_says_of_the_returned_points(model_fn, clean_batch):
    # What AutoAttack relies on instead of a forward pass of its own per stage.
    from at2l_tf.attacks.square import run_square

    x, y = clean_batch[0][:32], clean_batch[1][:32]
    for x_adv, fooled in (
        apgd.run_apgd(model_fn, x, y, loss="ce", eps=EPS, steps=5),
        apgd.run_apgd(model_fn, x, y, loss="dlr-targeted", eps=EPS, steps=3, target_classes=2),
        run_square(model_fn, x, y, eps=EPS, queries=30, seed=0),
    ):
        np.testing.assert_array_equal(np.asarray(fooled), ~_correct(model_fn, x_adv, y))
        assert 0 < np.sum(fooled) < len(y)
