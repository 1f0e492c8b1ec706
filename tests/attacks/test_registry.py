"""The attack registry: names, norms and parameter binding."""

import inspect

import numpy as np
import pytest

from at2l_tf import attacks
from at2l_tf.errors import ConfigError


def test_unknown_name_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match="unknown attack 'nope'") as info:
        attacks.get_entry("nope")
    for name in attacks.available_attacks():
        assert name in str(info.value)


def test_make_attack_with_unknown_name_raises_config_error():
    with pytest.raises(ConfigError, match="deepfool"):
        attacks.make_attack("deep_fool", eps=0.3)


def test_l2_attacks_are_registered():
    assert attacks.get_attack("cw") is attacks.carlini_wagner_l2
    assert attacks.get_attack("deepfool") is attacks.deepfool
    assert attacks.get_entry("cw").norm == "l2"
    assert attacks.get_entry("deepfool").norm == "l2"
    for name in attacks.TRAINING_ATTACKS:
        assert attacks.get_entry(name).norm == "linf"
    assert "cw" not in attacks.TRAINING_ATTACKS
    assert "deepfool" not in attacks.TRAINING_ATTACKS


def test_training_attacks_are_the_entries_that_say_so():
    assert attacks.TRAINING_ATTACKS == ("fgsm", "fgsm_rs", "ll", "ifgsm", "pgd", "ill", "ls_pga", "trades_kl")
    for name in ("apgd_ce", "apgd_t", "square", "autoattack", "cw", "deepfool"):
        assert not attacks.get_entry(name).training, name
    assert attacks.get_entry("square").black_box
    assert not any(attacks.get_entry(n).black_box for n in ("apgd_ce", "pgd", "autoattack"))
    assert attacks.get_entry("autoattack").composite and not attacks.get_entry("square").composite


@pytest.mark.parametrize("name", attacks.available_attacks())
def test_declared_params_are_keywords_with_defaults_in_the_function(name):
    entry = attacks.get_entry(name)
    sig = inspect.signature(entry.fn)
    for param in entry.user_params:
        assert param.name in entry.params
        assert entry.default(param.name) == sig.parameters[param.name].default


def test_a_param_declared_but_not_taken_is_refused_at_registration():
    from at2l_tf.attacks import registry

    with pytest.raises(ValueError, match="declares 'stepz'"):
        registry.register("typo", attacks.fgsm, "linf", "x", [attacks.Param("stepz", int, "x")])
    assert "typo" not in attacks.available_attacks()


@pytest.mark.parametrize(
    "param, value, message",
    [
        (attacks.Param("steps", int, "x", low=1), 0, "steps must be >= 1, received steps=0"),
        (attacks.Param("lr", float, "x", low=0.0, low_exclusive=True), 0.0,
         "lr must be > 0.0, received lr=0.0"),
        (attacks.Param("v", str, "x", choices=("a", "b")), "c", "v must be one of a, b, received v='c'"),
    ],
)
def test_param_check_names_the_value(param, value, message):
    with pytest.raises(ConfigError, match=message):
        param.check(value)
    param.check(None)  # Unset: the attack's default.


@pytest.mark.parametrize("name", attacks.available_attacks())
def test_entry_params_are_the_keyword_only_parameters(name):
    sig = inspect.signature(attacks.get_attack(name))
    assert list(sig.parameters)[:3] == ["model_fn", "x", "y"]
    assert set(attacks.get_entry(name).params) == set(list(sig.parameters)[3:])


def test_make_attack_binds_params_and_leaves_none_to_the_default():
    fn = attacks.make_attack("ifgsm", eps=0.3, steps=7, step_size=None)
    assert fn.bound_params == {"eps": 0.3, "steps": 7}
    assert fn.__name__ == "ifgsm_attack"


@pytest.mark.parametrize(
    "name, params, bad",
    [
        ("pgd", {"eps": 0.3, "stepsize": 0.01}, "'stepsize'"),  # Misspelt step_size.
        ("fgsm", {"eps": 0.3, "steps": 40}, "'steps'"),  # FGSM has no steps.
        ("cw", {"eps": 0.3, "max_iterations": 5}, "'eps'"),  # C&W is not eps-bounded.
        ("apgd_ce", {"eps": 0.3, "restart": 2}, "'restart'"),
    ],
)
def test_make_attack_rejects_parameters_the_attack_does_not_take(name, params, bad):
    accepted = ", ".join(attacks.get_entry(name).params)
    with pytest.raises(ConfigError) as info:
        attacks.make_attack(name, **params)
    assert str(info.value) == (
        f"attack {name!r} takes no parameter {bad}; it takes: {accepted}"
    )


def test_make_attack_binds_values_that_reach_the_attack(model_fn, clean_batch):
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    x_adv = np.asarray(attacks.make_attack("fgsm", eps=0.05)(model_fn, x, y))
    assert np.max(np.abs(x_adv - x)) == pytest.approx(0.05, abs=1e-6)


def test_make_attack_cw_binds_its_own_params(model_fn, clean_batch):
    x, y = clean_batch[0][:4], clean_batch[1][:4]
    fn = attacks.make_attack("cw", binary_search_steps=1, max_iterations=5)
    assert fn.bound_params == {"binary_search_steps": 1, "max_iterations": 5}
    x_adv = np.asarray(fn(model_fn, x, y))
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
