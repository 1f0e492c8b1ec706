"""Defence layers through the commands: train with `--preprocessing`, export the
whole defence, evaluate it naively and adaptively (BPDA, EOT, LS-PGA)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from at2l_tf import config as config_lib
from at2l_tf import evaluate, evaluation, savedmodel
from at2l_tf.errors import ConfigError

FAST = ("--num_examples=64", "--batch_size=64", "--verbose=0", "--pgd_steps=10")


def parse(*args):
    fv = evaluate.define_flags(flags.FlagValues())
    fv(["evaluate", *args])
    return fv


def _train(root, run_name, **preprocessing):
    from at2l_tf import experiment

    objective = preprocessing.pop("objective", "none")
    attack = preprocessing.pop("attack", "pgd")
    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=2048, batch_size=64, validation_size=128),
        attack=config_lib.AttackConfig(name=attack, steps=1),
        train=config_lib.TrainConfig(objective=objective, epochs=1, learning_rate=3e-3),
        eval=config_lib.EvalConfig(num_examples=0),
        preprocessing=config_lib.PreprocessingConfig(**preprocessing),
        workdir=str(root / run_name),
        export_dir=str(root / f"{run_name}_export"),
    )
    return experiment.run(cfg, verbose=0)


@pytest.fixture(scope="module")
def thermometer(tmp_path_factory):
    """A thermometer model trained clean for one short epoch (no adversarial training)."""
    root = tmp_path_factory.mktemp("thermometer")
    keras.utils.set_random_seed(0)
    return _train(root, "thermo", name="thermometer", thermometer_levels=8)["export_path"]


@pytest.fixture(scope="module")
def randomized(tmp_path_factory):
    root = tmp_path_factory.mktemp("randomized")
    keras.utils.set_random_seed(0)
    return _train(root, "rand", name="random_resize_pad")["export_path"]


def test_export_serves_the_whole_defence_and_the_network_behind_it(thermometer):
    clf = savedmodel.load_classifier(thermometer)
    meta = json.load(open(os.path.join(thermometer, savedmodel.METADATA_FILE)))
    assert meta["preprocessing"]["name"] == "thermometer" and clf.preprocessing.levels == 8
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    # The served model is the layer then the network.
    np.testing.assert_allclose(
        clf.model_fn(x), clf.net_fn(clf.preprocessing(x)), rtol=1e-5, atol=1e-5
    )
    # Its input gradient is zero (masked); through BPDA it is not.
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        plain = tf.reduce_sum(clf.model_fn(x))
        bpda = tf.reduce_sum(clf.net_fn(clf.preprocessing.bpda(x)))
    assert float(tf.reduce_max(tf.abs(tape.gradient(plain, x)))) == 0.0
    assert float(tf.reduce_max(tf.abs(tape.gradient(bpda, x)))) > 0.0


def test_adaptive_auto_breaks_what_naive_attacks_miss(thermometer, tmp_path):
    args = (f"--model_dir={thermometer}", "--attacks=pgd,ls_pga", *FAST)
    naive = evaluate.evaluate_from_flags(parse(*args, "--adaptive=none"))
    auto = evaluate.evaluate_from_flags(parse(*args, f"--output_json={tmp_path / 'r.json'}"))
    assert "adaptive" not in naive["attacks"]["pgd"] and naive["adaptive"] == "none"
    assert auto["attacks"]["pgd"]["adaptive"] == "bpda" and auto["preprocessing"] == "thermometer"
    assert auto["attacks"]["ls_pga"]["adaptive"] == "behind thermometer"
    assert auto["attacks"]["ls_pga"]["levels"] == 8
    # Naive PGD sees zero gradients: only its random start moves the image.
    assert auto["attacks"]["pgd"]["accuracy"] <= naive["attacks"]["pgd"]["accuracy"] - 0.3
    # The masking check fires on the naive run and names the adaptive attack.
    assert any("BPDA" in f["message"] for f in naive["flags"])
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["attacks"]["pgd"]["adaptive"] == "bpda"


def test_eot_runs_on_the_randomized_model(randomized):
    clf = savedmodel.load_classifier(randomized)
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    assert not np.allclose(clf.model_fn(x), clf.model_fn(x))  # Random at inference, served.
    report = evaluate.evaluate_from_flags(
        parse(f"--model_dir={randomized}", "--attacks=pgd", "--eot_draws=3", *FAST)
    )
    assert report["attacks"]["pgd"]["adaptive"] == "eot(3)"
    assert report["preprocessing"] == "random_resize_pad"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--adaptive=eot"], "adaptive=eot needs a model whose defence layer it matches "
         "(random_resize_pad); this model has a thermometer layer"),
        (["--adaptive=often"], "adaptive must be one of auto, none, bpda, eot, received adaptive='often'"),
        (["--eot_draws=0"], "eot_draws must be >= 1, received eot_draws=0"),
    ],
)
def test_bad_adaptive_flags_are_one_line_errors(thermometer, tmp_path, args, message):
    out = tmp_path / "r.json"
    with pytest.raises(ConfigError) as info:
        evaluate.evaluate_from_flags(
            parse(f"--model_dir={thermometer}", "--attacks=pgd", f"--output_json={out}", *FAST, *args)
        )
    assert str(info.value) == message
    assert not out.exists()


def test_adaptive_attacks_need_their_layer(tmp_path):
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(plain)
    out = tmp_path / "r.json"
    common = (f"--model_dir={plain}", "--dataset=mnist", f"--output_json={out}", *FAST)
    with pytest.raises(ConfigError, match="adaptive=bpda needs a model .*this model has no defence layer"):
        evaluate.evaluate_from_flags(parse(*common, "--attacks=pgd", "--adaptive=bpda"))
    with pytest.raises(ConfigError, match="attack 'ls_pga' attacks the classifier behind a thermometer"):
        evaluate.evaluate_from_flags(parse(*common, "--attacks=ls_pga"))
    assert not out.exists()


def test_adapt_wraps_gradient_attacks_only():
    from at2l_tf import defenses

    layer = defenses.ThermometerEncoding(4)
    specs = [evaluation.AttackSpec(n, {"eps": 0.3}) for n in ("fgsm", "square")]
    out = evaluation.adaptive.adapt(specs, layer=layer, net_fn=lambda z: z, model_fn=lambda x: x)
    assert [s.adaptive for s in out] == ["bpda", None]
    assert out[0].model_fn is not None and out[1].model_fn is None
    none = evaluation.adaptive.adapt(specs, layer=layer, net_fn=lambda z: z, model_fn=lambda x: x,
                                     mode="none")
    assert [s.model_fn for s in none] == [None, None]
