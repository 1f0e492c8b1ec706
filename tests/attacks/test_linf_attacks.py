"""Properties of the L-inf attacks (fgsm, fgsm_rs, ifgsm, pgd, ll, ill) on a small MNIST CNN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks

EPS = 0.1
# Few steps keep the eager CleverHans loops fast; the properties do not need more.
STEPS = 5
LINF_ATTACKS = ("fgsm", "fgsm_rs", "ifgsm", "pgd", "ll", "ill")
UNTARGETED = ("fgsm", "fgsm_rs", "ifgsm", "pgd")
LEAST_LIKELY = ("ll", "ill")
DETERMINISTIC = ("fgsm", "ifgsm", "ll", "ill")
ITERATIVE = ("ifgsm", "pgd", "ill")


def _run(name, model_fn, x, y, **params):
    params.setdefault("eps", EPS)
    if name in ITERATIVE:
        params.setdefault("steps", STEPS)
    return np.asarray(attacks.make_attack(name, **params)(model_fn, x, y))


def _cross_entropy(model_fn, x, y):
    logits = model_fn(tf.convert_to_tensor(x))
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits).numpy()


def _probabilities(model_fn, x):
    return tf.nn.softmax(model_fn(tf.convert_to_tensor(x))).numpy()


@pytest.fixture(scope="module")
def adversarials(model_fn, clean_batch):
    """Each attack at `EPS` on the clean batch, computed once."""
    x, y = clean_batch
    keras.utils.set_random_seed(0)
    return {name: _run(name, model_fn, x, y) for name in LINF_ATTACKS}


@pytest.mark.parametrize("name", LINF_ATTACKS)
def test_eps_zero_returns_x(name, model_fn, clean_batch):
    x, y = clean_batch
    np.testing.assert_array_equal(_run(name, model_fn, x, y, eps=0.0), x)


@pytest.mark.parametrize("name", LINF_ATTACKS)
def test_perturbation_inside_eps_ball(name, adversarials, clean_batch):
    x, _ = clean_batch
    assert np.max(np.abs(adversarials[name] - x)) <= EPS + 1e-6


@pytest.mark.parametrize("name", LINF_ATTACKS)
def test_output_inside_box(name, adversarials):
    assert adversarials[name].min() >= 0.0
    assert adversarials[name].max() <= 1.0


@pytest.mark.parametrize("name", UNTARGETED)
def test_untargeted_attacks_raise_cross_entropy(name, adversarials, model_fn, clean_batch):
    x, y = clean_batch
    clean = _cross_entropy(model_fn, x, y)
    adv = _cross_entropy(model_fn, adversarials[name], y)
    assert adv.mean() > clean.mean()
    assert np.mean(adv > clean) >= 0.9


@pytest.mark.parametrize("name", LEAST_LIKELY)
def test_least_likely_attacks_raise_least_likely_probability(
    name, adversarials, model_fn, clean_batch
):
    x, _ = clean_batch
    clean = _probabilities(model_fn, x)
    target = np.argmin(clean, axis=-1)  # least-likely class on the clean input
    rows = np.arange(len(x))
    p_clean = clean[rows, target]
    p_adv = _probabilities(model_fn, adversarials[name])[rows, target]
    assert p_adv.mean() > p_clean.mean()
    assert np.mean(p_adv > p_clean) >= 0.9


def test_pgd_restarts_never_lower_loss_than_one_start(model_fn, clean_batch):
    # With the same global seed, the first random start of `restarts=3` is the
    # start of `restarts=1`; the restarts keep the per-example best, so no
    # example may lose.
    x, y = clean_batch

    def run(restarts):
        keras.utils.set_random_seed(7)
        return _run("pgd", model_fn, x, y, restarts=restarts)

    one_start = run(1)
    np.testing.assert_array_equal(run(1), one_start)  # the comparison is deterministic
    loss_one = _cross_entropy(model_fn, one_start, y)
    loss_three = _cross_entropy(model_fn, run(3), y)
    assert np.all(loss_three >= loss_one)
    assert loss_three.mean() > loss_one.mean()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_concatenated_halves(name, model_fn, clean_batch):
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    whole = _run(name, model_fn, x, y)
    halves = np.concatenate(
        [_run(name, model_fn, x[:4], y[:4]), _run(name, model_fn, x[4:], y[4:])]
    )
    np.testing.assert_allclose(whole, halves, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", LINF_ATTACKS)
def test_negative_eps_raises_naming_the_value(name, model_fn, clean_batch):
    x, y = clean_batch
    with pytest.raises(ValueError, match=r"eps=-0\.1"):
        attacks.get_attack(name)(model_fn, x, y, eps=-0.1)


@pytest.mark.parametrize("name", ITERATIVE)
def test_zero_steps_raises_naming_the_value(name, model_fn, clean_batch):
    x, y = clean_batch
    with pytest.raises(ValueError, match=r"steps=0"):
        attacks.get_attack(name)(model_fn, x, y, eps=EPS, steps=0)


@pytest.mark.parametrize("name", ["pgd", "fgsm_rs"])
def test_a_seeded_random_start_depends_on_the_inputs_only(name, model_fn, clean_batch):
    # What `evaluate` needs to resume a run or split it over workers: a seeded
    # call gives the same adversarials whatever ran before it, in any process.
    x, y = clean_batch[0][:8], clean_batch[1][:8]
    attack = attacks.get_attack(name)
    params = {"steps": 3, "restarts": 2} if name == "pgd" else {}
    keras.utils.set_random_seed(1)
    first = np.asarray(attack(model_fn, x, y, eps=0.1, seed=4, **params))
    attack(model_fn, x, y, eps=0.1, **params)  # Draws from the global generator.
    keras.utils.set_random_seed(2)
    again = np.asarray(attack(model_fn, x, y, eps=0.1, seed=4, **params))
    np.testing.assert_array_equal(first, again)
    other = np.asarray(attack(model_fn, x, y, eps=0.1, seed=5, **params))
    assert not np.array_equal(first, other)
    assert np.max(np.abs(first - x)) <= 0.1 + 1e-6
