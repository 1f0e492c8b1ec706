"""TRADES' inner attack: PGD on KL(f(x) ‖ f(x')) from x + 0.001·N(0, 1), label-free."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks, losses

A = 5.0  # Logit scale of the toy model.


def _toy_model():
    """`f(x1, x2) = (A·x1, A·x2, -20)`: class 2 is never predicted.

    From x = (0.5, 0.5), p(x) = (1/2, 1/2, ~0). The KL to p(x) grows only when
    x1 - x2 changes (the anti-diagonal), while the cross-entropy of label 2
    grows when x1 and x2 both grow (the diagonal), along which the KL stays 0:
    the two attacks must go opposite ways.
    """
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(3, name="logits")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[A, 0, 0], [0, A, 0]], "float32"), np.array([0, 0, -20], "float32")])
    return model


def _kl(model, x, x_adv):
    return losses.kl_divergence(model(x), model(x_adv)).numpy()


X = np.full((16, 2), 0.5, "float32")


def test_the_kl_attack_maximizes_the_kl_not_the_cross_entropy():
    model = _toy_model()
    tf.random.set_seed(0)
    x_kl = attacks.trades_kl(model, X, np.full(16, 2), eps=0.2, steps=10, step_size=0.05).numpy()
    x_ce = attacks.pgd(model, X, np.full(16, 2), eps=0.2, steps=10, step_size=0.05).numpy()
    # KL attack: x1 - x2 = ±2 eps (p moves to (0.88, 0.12)); CE attack: both up, KL 0.
    np.testing.assert_allclose(np.abs(x_kl[:, 0] - x_kl[:, 1]), 0.4, atol=1e-5)
    expected = 0.5 * np.log(0.5 / (1 / (1 + np.exp(-2.0)))) + 0.5 * np.log(0.5 / (1 / (1 + np.exp(2.0))))
    np.testing.assert_allclose(_kl(model, X, x_kl), expected, rtol=1e-4)
    np.testing.assert_allclose(x_ce, 0.7, atol=1e-6)
    assert _kl(model, X, x_ce).max() < 1e-6
    # The KL grows the same way either way along the anti-diagonal: the Gaussian start
    # decides, so both ways occur (ascending the CE of the predicted class, class 0 at
    # this tie, would always lower x1).
    assert set(np.sign(x_kl[:, 0] - x_kl[:, 1])) == {-1.0, 1.0}


def test_it_moves_from_the_point_where_the_kl_gradient_is_zero():
    # At x' = x the KL is at its minimum: only the Gaussian start gets the
    # ascent going (signed steps from x itself would return x).
    model = _toy_model()
    with tf.GradientTape() as tape:
        x = tf.constant(X)
        tape.watch(x)
        kl = tf.reduce_sum(losses.kl_divergence(tf.stop_gradient(model(X)), model(x)))
    assert np.abs(tape.gradient(kl, x).numpy()).max() == 0.0
    x_adv = attacks.trades_kl(model, X, eps=0.1, steps=3).numpy()
    assert np.abs(x_adv - X).max() > 0.05
    assert attacks.trades_kl(model, X, eps=0.1, steps=3, sigma=0.0).numpy().tolist() == X.tolist()


def test_the_label_is_ignored():
    model = _toy_model()
    out = []
    for label in (0, 1, 2):
        tf.random.set_seed(3)
        out.append(attacks.trades_kl(model, X, np.full(16, label), eps=0.2, steps=4).numpy())
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_within_eps_inside_the_box_and_graph_safe():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    x = np.random.default_rng(0).uniform(0, 1, (16, 8)).astype("float32")
    x[:, 0] = 0.0  # Corners of the box.
    x[:, 1] = 1.0
    compiled = tf.function(lambda z: attacks.trades_kl(model, z, eps=0.1, steps=5, step_size=0.03))
    for x_adv in (attacks.trades_kl(model, x, eps=0.1, steps=5, step_size=0.03), compiled(x)):
        x_adv = x_adv.numpy()
        assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.abs(x_adv - x).max() > 0.05
        assert _kl(model, x, x_adv).mean() > 0
    np.testing.assert_array_equal(attacks.trades_kl(model, x, eps=0.0, steps=5).numpy(), x)


def test_it_is_a_registered_training_attack_with_steps_and_step_size():
    entry = attacks.get_entry("trades_kl")
    assert entry.training and entry.norm == "linf"
    fn = attacks.make_attack("trades_kl", eps=0.3, steps=40, step_size=0.01)
    assert fn.bound_params == {"eps": 0.3, "steps": 40, "step_size": 0.01}
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        attacks.trades_kl(_toy_model(), X, eps=0.1, sigma=-1.0)
