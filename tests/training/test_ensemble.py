"""Ensemble AT²L (Algorithm 2): attack sets, pairing, equivalence with
Algorithm 1, static models, pre-training and bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import attacks
from at2l_tf import config as config_lib
from at2l_tf.errors import ConfigError
from at2l_tf.training import ensemble
from at2l_tf.training.at2l_model import AT2LModel


def _tiny(seed=0, input_shape=(8, 8, 1), classes=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def _data(n=64, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 8, 8, 1)).astype(np.float32), (np.arange(n) % classes).astype(np.int64)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("gra", ("fgsm", "ll", "ifgsm", "ill")),
        ("opt", ("cw",)),
        ("mix", ("fgsm", "ll", "ifgsm", "ill", "cw")),
        ("fgsm,ll,fgsm", ("fgsm", "ll")),
        (["pgd", "cw"], ("pgd", "cw")),
        ("", ()),
    ],
)
def test_attack_sets_by_name_or_list(spec, expected):
    assert ensemble.parse_attack_set(spec) == expected


@pytest.mark.parametrize(
    "spec, match",
    [
        ("grad", "unknown ensemble attack or attack set 'grad'; known sets: gra, opt, mix"),
        ("fgsm,apgd_ce", "unknown ensemble attack or attack set 'apgd_ce'"),
        ("gra,cw", "attack set 'gra' cannot be combined"),
    ],
)
def test_unknown_attack_sets_are_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        ensemble.parse_attack_set(spec)


def test_every_batch_pairs_each_clean_example_with_a_version_of_itself():
    # Versions are recognisable: version v of x is x * 0.5 + v / 10 (exact in float32).
    x, y = _data(96)
    offsets = {"a": 0.1, "b": 0.2, "c": 0.3}
    fns = {k: (lambda m, xb, yb, o=o: xb * 0.5 + o) for k, o in offsets.items()}
    sets = {k: ensemble.craft_set(ensemble.compile_attack(fn, None), x, y, batch_size=40)
            for k, fn in fns.items()}
    keys = sorted(sets)
    choice = ensemble.sample_versions(len(x), len(keys), np.random.default_rng(0))
    assert set(choice) == {0, 1, 2}  # Every version is used.
    x_adv = np.stack([sets[keys[c]][i] for i, c in enumerate(choice)])
    seen = set()
    for xb, yb, ab in ensemble.epoch_dataset(x, y, x_adv, batch_size=16, seed=3):
        xb, yb, ab = xb.numpy(), yb.numpy(), ab.numpy()
        offset = (ab - xb * 0.5).reshape(len(xb), -1)
        # Each adversarial version is derived from its own clean example...
        np.testing.assert_allclose(offset, offset[:, :1].repeat(offset.shape[1], 1), atol=1e-6)
        assert np.all(np.min(np.abs(offset[:, :1] - np.array([[0.1, 0.2, 0.3]])), axis=1) < 1e-5)
        # ...and carries that example's label (row i of x is unique).
        rows = [int(np.flatnonzero((x == xi).all(axis=(1, 2, 3)))[0]) for xi in xb]
        np.testing.assert_array_equal(y[rows], yb)
        seen.update(rows)
    assert len(seen) == 96  # One epoch covers every example once.


def test_with_fgsm_and_the_current_model_the_step_equals_algorithm_1():
    """A = {fgsm}, M = {current}, regenerated every step = AT2LModel crafting FGSM."""
    clf = _tiny()
    x, y = _data(32)
    kwargs = dict(objective="at2l", attack="fgsm", attack_params={"eps": 0.1}, lambda2=0.7, margin=0.3, seed=4)
    in_step = AT2LModel(clf, **kwargs)
    given = AT2LModel(clf, **kwargs)
    x_adv = attacks.make_attack("fgsm", eps=0.1)(lambda z: clf(z, training=False), x, y)
    loss_a, out_a = in_step._compute_losses((x, y), training=False)
    loss_b, out_b = given._compute_losses((x, y, x_adv), training=False)
    np.testing.assert_allclose(out_a["adv_logits"], out_b["adv_logits"], rtol=1e-5, atol=1e-6)
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5)
    assert float(tf.reduce_sum(out_b["hinge"])) > 0  # The triplet term is live.
    # And a different x_adv gives a different loss: the given one is used.
    loss_c, _ = AT2LModel(clf, **kwargs)._compute_losses((x, y, x), training=False)
    assert float(loss_c) != pytest.approx(float(loss_b), rel=1e-3)


def test_negatives_of_given_adversarials_have_another_label():
    clf = _tiny()
    x, y = _data(32)
    model = AT2LModel(clf, objective="at2l", attack="fgsm", attack_params={"eps": 0.1}, seed=1)
    x_adv = np.clip(x + 0.05, 0, 1)
    adv_logits = clf(x_adv)
    from at2l_tf import losses

    index, valid = losses.select_negatives(y, adv_logits, num_classes=4, seed=1)
    assert bool(tf.reduce_all(valid))
    assert np.all(y[index.numpy()] != y)
    _, out = model._compute_losses((x, y, x_adv), training=False)
    assert out["hinge"].shape == (32,)


def test_fit_ensemble_trains_the_current_model_and_never_a_static_one(tmp_path):
    static = _tiny(seed=1)
    before = [w.copy() for w in static.get_weights()]
    clf = _tiny(seed=2)
    start = [w.copy() for w in clf.get_weights()]
    model = AT2LModel(clf, objective="at2l", attack="fgsm", attack_params={"eps": 0.1}, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = _data(64)
    fns = ensemble.make_attack_fns(("fgsm", "cw"), eps=0.1, steps=2, cw_steps=2)
    out = ensemble.fit_ensemble(
        model, x, y, attack_fns=fns, static_models=[("static", lambda z: static(z, training=False))],
        epochs=3, regenerate_every=2, batch_size=16, verbose=0,
    )
    for a, b in zip(before, static.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(start, clf.get_weights()))
    assert out["versions"] == ["cw@current", "cw@static", "fgsm@current", "fgsm@static"]
    # Static sets are crafted once; the current model's at epochs 1 and 3.
    assert len(out["regeneration_seconds"]["fgsm@static"]) == 1
    assert len(out["regeneration_seconds"]["fgsm@current"]) == 2
    assert len(out["history"]["loss"]) == 3


def test_static_models_of_another_shape_or_missing_are_refused(tmp_path):
    path = str(tmp_path / "small.keras")
    _tiny(input_shape=(8, 8, 1)).save(path)
    with pytest.raises(ConfigError, match=r"static model .*small.keras takes images of shape \(8, 8, 1\), "
                                          r"the dataset's are \(28, 28, 1\)"):
        ensemble.load_static_models([path], (28, 28, 1), 4)
    with pytest.raises(ConfigError, match="has 4 classes, the dataset has 10"):
        ensemble.load_static_models([path], (8, 8, 1), 10)
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        ensemble.load_static_models([str(tmp_path / "nope.keras")], (8, 8, 1), 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ensemble_attacks=grad"], "unknown ensemble attack or attack set 'grad'"),
        (["--ensemble_attacks=gra", "--static_models=/no/such/model.keras"],
         "static model does not exist: /no/such/model.keras"),
        (["--static_models=x.keras"], "--static_models needs --ensemble_attacks"),
        (["--ensemble_attacks=gra", "--objective=none"], "ensemble training needs objective at, at2l or tr"),
        (["--ensemble_attacks=gra", "--regenerate_every=0"], "regenerate_every must be >= 1"),
        (["--pretrain_epochs=-1"], "pretrain_epochs must be >= 0"),
    ],
)
def test_bad_ensemble_flags_are_one_line(args, message):
    from absl import flags

    from at2l_tf import train

    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", *args])
        with pytest.raises(ConfigError, match=message):
            train.config_from_flags().validate()
    finally:
        flags.FLAGS.unparse_flags()


def test_wrong_shaped_static_model_exits_1_before_training(tmp_path):
    path = str(tmp_path / "small.keras")
    _tiny(input_shape=(8, 8, 1), classes=10).save(path)
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--ensemble_attacks=gra", f"--static_models={path}",
         f"--workdir={tmp_path / 'w'}", "--export_dir="],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == [f"train: error: static model {path} takes images of shape (8, 8, 1), "
                      "the dataset's are (28, 28, 1)"]
    assert not (tmp_path / "w").exists()  # Nothing trained, nothing written.


def test_tiny_ensemble_run_with_pretraining_end_to_end(tmp_path):
    from at2l_tf import experiment

    static = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    static_path = str(tmp_path / "static.keras")
    static.save(static_path)
    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=128),
        attack=config_lib.AttackConfig(name="fgsm", steps=2),
        train=config_lib.TrainConfig(objective="at2l", epochs=2, pretrain_epochs=1),
        ensemble=config_lib.EnsembleConfig(attacks=("fgsm", "ill"), static_models=(static_path,),
                                           regenerate_every=1),
        eval=config_lib.EvalConfig(num_examples=32, attacks=("fgsm",)),
        workdir=str(tmp_path / "run"),
        export_dir=None,
    )
    results = experiment.run(cfg, verbose=0)
    ckpts = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert ckpts == ["epoch-01.weights.h5", "epoch-02.weights.h5", "epoch-03.weights.h5"]
    assert len(results["pretrain_history"]["loss"]) == 1
    assert "adv_acc" not in results["pretrain_history"]  # Clean training.
    assert len(results["history"]["triplet"]) == 2
    regen = results["ensemble"]["regeneration_seconds"]
    assert set(regen) == {"fgsm@current", "ill@current", f"fgsm@{static_path}", f"ill@{static_path}"}
    assert len(regen["fgsm@current"]) == 2 and len(regen[f"fgsm@{static_path}"]) == 1
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["config"]["ensemble"]["attacks"] == ["fgsm", "ill"]
