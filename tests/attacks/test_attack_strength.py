"""Attack strength: the requested iterations run, the documented step sizes are
used, and iterative attacks beat FGSM where they must.

An attack that silently ran fewer steps, or fell back to another step size,
would still stay in the eps ball and still raise the loss: the property tests
of `test_linf_attacks.py` would pass. These count the model's calls and compare
the defaults with the step sizes the docstrings state.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks
from at2l_tf.attacks import apgd, fast_gradient, iterative

EPS = 0.1


def _counting(model_fn):
    """`model_fn` that counts its calls in a variable (counts inside graphs too)."""
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def fn(x):
        calls.assign_add(1)
        return model_fn(x)

    return fn, calls


def _calls(attack, model_fn, x, y, **params):
    fn, calls = _counting(model_fn)
    attack(fn, tf.constant(x), tf.constant(y), eps=EPS, **params)
    return int(calls.numpy())


# Model calls besides the one gradient per step, for a batch with its labels
# given: I-LL asks for the least-likely class once; APGD classifies the clean
# batch once (misclassified examples are not attacked) and evaluates its random
# start once (the loss and gradient that the first step uses).
EXTRA_CALLS = {"ifgsm": 0, "pgd": 0, "ill": 1, "apgd_ce": 2, "apgd_dlr": 2}


@pytest.mark.parametrize("name", sorted(EXTRA_CALLS))
def test_each_requested_step_is_one_gradient(name, model_fn, clean_batch):
    # Exactly `steps` gradients (plus a fixed set-up): no step dropped or
    # capped, no extra forward pass per step.
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    attack = attacks.get_attack(name)
    counts = {steps: _calls(attack, model_fn, x, y, steps=steps) for steps in (3, 7, 12)}
    assert counts == {steps: steps + EXTRA_CALLS[name] for steps in counts}


def test_pgd_restarts_run_whole_attacks(model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    one = _calls(iterative.pgd, model_fn, x, y, steps=5, restarts=1)
    three = _calls(iterative.pgd, model_fn, x, y, steps=5, restarts=3)
    # One start: its 5 gradient steps. Three: 3 x 5 steps, and one forward
    # pass per start to compare their losses.
    assert (one, three) == (5, 3 * 5 + 3)


def test_iterative_default_step_is_two_and_a_half_eps_over_steps(model_fn, clean_batch):
    x, y = clean_batch
    default = np.asarray(iterative.ifgsm(model_fn, x, y, eps=EPS, steps=4))
    stated = np.asarray(iterative.ifgsm(model_fn, x, y, eps=EPS, steps=4, step_size=2.5 * EPS / 4))
    other = np.asarray(iterative.ifgsm(model_fn, x, y, eps=EPS, steps=4, step_size=EPS / 4))
    np.testing.assert_array_equal(default, stated)
    assert np.abs(default - other).max() > 1e-3  # The comparison can tell step sizes apart.
    assert iterative.default_step(0.3, 40, None) == pytest.approx(0.01875)


def test_pgd_default_step_through_the_registry(model_fn, clean_batch):
    x, y = clean_batch

    def run(**params):
        keras.utils.set_random_seed(3)
        return np.asarray(attacks.make_attack("pgd", eps=EPS, steps=3, **params)(model_fn, x, y))

    np.testing.assert_array_equal(run(), run(step_size=2.5 * EPS / 3))
    assert np.abs(run() - run(step_size=EPS / 10)).max() > 1e-3


def test_fgsm_rs_default_step_is_one_and_a_quarter_eps(model_fn, clean_batch):
    x, y = clean_batch

    def run(**params):
        keras.utils.set_random_seed(5)
        return np.asarray(fast_gradient.fgsm_rs(model_fn, x, y, eps=EPS, **params))

    np.testing.assert_array_equal(run(), run(step_size=1.25 * EPS))
    assert np.abs(run() - run(step_size=EPS)).max() > 1e-3


def _accuracy(model_fn, x, y):
    return float(np.mean(np.argmax(model_fn(tf.constant(x)), axis=-1) == y))


def test_iterative_attacks_beat_fgsm_on_an_undefended_model(model_fn, mnist_arrays):
    # On a model trained without attacks, the loss is far from linear in the
    # eps ball: many steps find adversarials that one FGSM step misses.
    images, labels = mnist_arrays
    x, y = images[9000:9256], labels[9000:9256]
    keras.utils.set_random_seed(0)
    acc = {
        "fgsm": _accuracy(model_fn, fast_gradient.fgsm(model_fn, x, y, eps=EPS), y),
        "pgd": _accuracy(model_fn, iterative.pgd(model_fn, x, y, eps=EPS, steps=20), y),
        "apgd_ce": _accuracy(model_fn, apgd.apgd_ce(model_fn, x, y, eps=EPS, steps=20), y),
    }
    assert acc["pgd"] <= acc["fgsm"] - 0.10, acc
    assert acc["apgd_ce"] <= acc["pgd"] + 0.02, acc
