"""The train command: flag validation and one tiny end-to-end run."""

import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from at2l_tf import config as config_lib
from at2l_tf.errors import ConfigError


@pytest.mark.parametrize(
    "arg, match",
    [
        ("--eps=-0.1", "eps must be >= 0.0, received eps=-0.1"),
        ("--attack=cw", "unknown training attack 'cw'"),
        ("--objective=free", "unknown objective 'free'"),
        ("--lambda1=-1", "lambda1=-1"),
        ("--lambda2=-2", "lambda2=-2"),
        ("--margin=-0.5", "margin=-0.5"),
        ("--batch_size=1", "batch_size must be >= 2"),
        ("--epochs=0", "epochs=0"),
        ("--dataset=svhn", "unknown dataset 'svhn'"),
        ("--model=mnist_z", "unknown model 'mnist_z'"),
        ("--model=cifar10_small", "built for cifar10, not mnist"),
        ("--attack_steps=0", "attack_steps=0"),
        ("--eval_attacks=fgsm,nope", "unknown attack 'nope'"),
        ("--strategy=tpu", "unknown strategy 'tpu'"),
        ("--eval_autoattack_version=plus", "eval_autoattack_version must be one of standard, fast"),
        ("--lr_schedule=step", "unknown lr_schedule 'step'; known: constant, cosine"),
        ("--preprocessing=jpeg", "unknown preprocessing 'jpeg'; known: none, thermometer, random_resize_pad"),
        ("--preprocessing=thermometer --attack=ls_pga --thermometer_levels=1",
         "thermometer_levels must be >= 2, received thermometer_levels=1"),
        ("--preprocessing=random_resize_pad --resize_min=33 --resize_output=32",
         "resize_min < resize_output, received image size 28, resize_min=33, resize_output=32"),
        ("--preprocessing=random_resize_pad --resize_min=20",
         "image size <= resize_min < resize_output, received image size 28, resize_min=20"),
        ("--attack=ls_pga", "attack 'ls_pga' attacks a thermometer encoding: it needs --preprocessing=thermometer"),
        ("--preprocessing=thermometer", "zero input gradient, so attack 'pgd' cannot train against it"),
        ("--ema=1", "ema must be in [0, 1) (0: off), received ema=1.0"),
        ("--ema=-0.5", "received ema=-0.5"),
        ("--eps_warmup_epochs=-1", "eps_warmup_epochs must be >= 0, received eps_warmup_epochs=-1"),
        ("--eps_warmup_epochs=3 --epochs=3", "eps_warmup_epochs must be < epochs so that training ends at "
         "the full eps, received eps_warmup_epochs=3 with epochs=3"),
        ("--eps_warmup_epochs=1 --objective=none", "objective='none' crafts no adversarial examples"),
        ("--eps_warmup_epochs=1 --objective=at --ensemble_attacks=gra",
         "ensemble training crafts its adversarial sets at the full eps"),
        ("--awp_gamma=-0.01", "awp_gamma must be >= 0 (0: off), received awp_gamma=-0.01"),
        ("--awp_gamma=0.01 --awp_warmup_epochs=-2", "awp_warmup_epochs must be >= 0, received awp_warmup_epochs=-2"),
        ("--awp_gamma=0.01 --awp_warmup_epochs=3 --epochs=3", "awp_warmup_epochs must be < epochs or AWP "
         "never starts, received awp_warmup_epochs=3 with epochs=3"),
    ],
)
def test_bad_flags_are_one_line_config_errors(parse, arg, match):
    with pytest.raises(ConfigError, match=re.escape(match)) as info:
        parse(*arg.split()).validate()
    assert "\n" not in str(info.value)


def test_defaults_are_at2l_on_mnist(parse):
    cfg = parse().validate()
    assert (cfg.data.dataset, cfg.model_name, cfg.train.objective, cfg.attack.name) == (
        "mnist",
        "mnist_small",
        "at2l",
        "pgd",
    )
    assert cfg.eps == 0.3 and cfg.export_dir == "savedmodels/mnist_at2l"


def test_flagfiles_parse_and_validate(parse):
    root = os.path.join(os.path.dirname(__file__), os.pardir, "flags")
    # Search recipes (*_tune.flags) are the tune command's: tests/test_tune.py parses them;
    # GAN recipes (*_wgan.flags) the train_gan command's: tests/training/test_wgan.py.
    names = sorted(
        f for f in os.listdir(root)
        if f.endswith(".flags") and not f.endswith(("_tune.flags", "_wgan.flags"))
    )
    assert {"mnist_at2l.flags", "mnist_at.flags", "cifar10_at2l.flags", "cats_vs_dogs_at2l.flags"} <= set(names)
    for name in names:
        cfg = parse(f"--flagfile={os.path.join(root, name)}").validate()
        assert isinstance(cfg, config_lib.ExperimentConfig)


def test_bad_flag_exits_non_zero_with_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--eps=-1", f"--workdir={tmp_path / 'w'}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == ["train: error: eps must be >= 0.0, received eps=-1.0"]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "w").exists()  # Nothing written before validation.


def test_tiny_end_to_end_run_writes_everything(tmp_path):
    from at2l_tf import experiment

    cfg = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=128),
        attack=config_lib.AttackConfig(name="pgd", steps=2),
        train=config_lib.TrainConfig(objective="at2l", epochs=1),
        eval=config_lib.EvalConfig(num_examples=64, pgd_steps=3),
        workdir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    results = experiment.run(cfg, verbose=0)
    run = tmp_path / "run"
    assert (run / "model.keras").exists()
    assert (run / "checkpoints" / "epoch-01.weights.h5").exists()
    assert os.listdir(run / "logs")
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["test"]["num_examples"] == 64
    assert set(on_disk["test"]["attacks"]) == {"fgsm", "pgd", "autoattack"}
    assert on_disk["test"]["attacks"]["pgd"]["steps"] == 3
    assert on_disk["test"]["attacks"]["autoattack"]["version"] == "fast"
    worst = on_disk["test"]["robust_accuracy"]
    assert worst <= min(e["accuracy"] for e in on_disk["test"]["attacks"].values())
    assert on_disk["test"]["attacks"]["pgd"]["mean_linf"] <= 0.3 + 1e-6
    assert set(on_disk["history"]) >= {"loss", "triplet", "acc", "adv_acc", "val_adv_acc"}
    assert results["export_path"] == str(tmp_path / "export" / "1")
    assert os.path.exists(os.path.join(results["export_path"], "saved_model.pb"))


def test_cosine_schedule_decays_to_zero_over_all_training_steps(parse):
    from at2l_tf import experiment

    cfg = parse("--lr_schedule=cosine", "--learning_rate=0.002", "--epochs=4").validate()
    schedule = experiment.learning_rate(cfg, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(20)) == pytest.approx(0.001, rel=1e-5)  # Half-way: half the rate.
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    assert experiment.learning_rate(parse().validate()) == pytest.approx(1e-3)  # constant
    with pytest.raises(ValueError, match="needs the number of steps per epoch"):
        experiment.learning_rate(cfg)


def test_every_objective_and_attack_flag_reaches_the_model(parse):
    # Distinct values everywhere, so that a swap (λ1 for λ2) or a dropped
    # value (margin, eps, distance, seed) shows.
    from at2l_tf import experiment

    cfg = parse(
        "--objective=tr", "--attack=ifgsm", "--eps=0.2", "--attack_steps=3",
        "--attack_step_size=0.05", "--lambda1=0.3", "--lambda2=0.7", "--margin=1.5",
        "--triplet_distance=l2", "--seed=5", "--learning_rate=0.002", "--model=mnist_d",
    ).validate()
    model = experiment.build_model(cfg)
    got = {f: getattr(model, f) for f in ("objective_name", "attack", "lambda1", "lambda2", "margin", "seed")}
    assert got == {
        "objective_name": "tr", "attack": "ifgsm", "lambda1": 0.3, "lambda2": 0.7, "margin": 1.5, "seed": 5
    }
    assert model._attack_fn.bound_params == {"eps": 0.2, "steps": 3, "step_size": 0.05}
    assert (model.triplet.distance, model.triplet.seed) == ("l2", 5)
    assert model.classifier.name == "mnist_d"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)


def test_single_step_training_attacks_get_eps_and_no_steps(parse):
    from at2l_tf import experiment

    model = experiment.build_model(parse("--attack=fgsm", "--attack_steps=7").validate())
    assert model._attack_fn.bound_params == {"eps": 0.3}
    model = experiment.build_model(parse("--attack=fgsm_rs", "--attack_step_size=0.2").validate())
    assert model._attack_fn.bound_params == {"eps": 0.3, "step_size": 0.2}


def test_a_flag_absl_rejects_is_a_one_line_error_of_the_command(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", f"--workdir={tmp_path / 'w'}", "--epochs=two"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 1
    # TensorFlow's C++ start-up lines (absl logging before init) aside.
    tf_chatter = ("E0000", "I0000", "W0000", "WARNING: All log")
    assert [l for l in run.stderr.splitlines() if l and not l.startswith(tf_chatter)] == [
        "train: error: flag --epochs=two: invalid literal for int() with base 10: 'two'"
    ]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no_such_flag=1"], "train: error: Unknown command line flag 'no_such_flag'"),
        (["--flagfile=/no/such.flags"],
         "train: error: Unable to open flagfile: [Errno 2] No such file or directory: '/no/such.flags'"),
        (["--epochs"], "train: error: Missing value for flag --epochs"),
        (["--lambda2=half"], "train: error: flag --lambda2=half: could not convert string to float: 'half'"),
    ],
)
def test_flag_parsing_errors_are_one_line(capsys, args, message):
    # The parser `cli.run` gives absl, on flags like the train command's.
    from at2l_tf import cli

    fv = flags.FlagValues()
    flags.DEFINE_integer("epochs", 3, "", flag_values=fv)
    flags.DEFINE_float("lambda2", 0.5, "", flag_values=fv)
    with pytest.raises(SystemExit) as info:
        cli.parse_flags("train", ["train", *args], fv)
    assert info.value.code == 1
    assert capsys.readouterr().err == message + "\n"


# --- Training ingredients (issue 31): the ε warm-up, weight averaging, AWP ---


def test_eps_warmup_ramps_per_epoch_and_is_on_by_default_for_mart_only(parse):
    from at2l_tf import experiment

    cfg = parse("--objective=trades", "--eps_warmup_epochs=4", "--epochs=6").validate()
    got = [experiment.training_eps(cfg, e) for e in range(6)]
    # Epoch e < N at eps·(e + ½)/N, the ramp's mean over the epoch; then the full eps.
    assert got == pytest.approx([0.0375, 0.1125, 0.1875, 0.2625, 0.3, 0.3])
    for objective in ("at", "at2l", "tr", "trades", "none"):
        cfg = parse(f"--objective={objective}", "--epochs=10").validate()
        assert cfg.train.eps_warmup == 0 and experiment.training_eps(cfg, 0) == 0.3
    assert parse("--objective=mart", "--epochs=10").validate().train.eps_warmup == 2
    assert parse("--objective=mart", "--epochs=2").validate().train.eps_warmup == 1  # Ends at the full eps.
    assert parse("--objective=mart", "--epochs=1").validate().train.eps_warmup == 0
    assert parse("--objective=mart", "--eps_warmup_epochs=0").validate().train.eps_warmup == 0


def test_ingredient_flags_reach_the_model(parse):
    from at2l_tf import experiment

    cfg = parse("--objective=trades", "--ema=0.995", "--awp_gamma=0.005", "--awp_warmup_epochs=2",
                "--epochs=5").validate()
    model = experiment.build_model(cfg, steps_per_epoch=7)
    assert (model.ema, model.awp_gamma, model.awp_start_step) == (0.995, 0.005, 14)
    assert model.weight_average is not None and model.weight_average.decay == 0.995
    model = experiment.build_model(parse().validate())
    assert (model.ema, model.awp_gamma, model.weight_average) == (0.0, 0.0, None)


def _tiny_ingredients_config(tmp_path, name, **train):
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=64),
        attack=config_lib.AttackConfig(name="fgsm"),
        train=config_lib.TrainConfig(objective="at", mixed_precision="off", seed=1, **train),
        eval=config_lib.EvalConfig(attacks=("fgsm",), num_examples=64),
        workdir=str(tmp_path / name),
        export_dir=str(tmp_path / f"{name}_export"),
    )


def test_weight_average_is_what_model_keras_and_the_export_hold(tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from at2l_tf import experiment, savedmodel

    cfg = _tiny_ingredients_config(tmp_path, "ema", epochs=2, ema=0.9)
    results = experiment.run(cfg, verbose=0)
    assert results["weights"] == "exponential moving average, decay 0.9 per step"
    assert "val_adv_acc" in results["history"]
    # The last epoch's checkpoint holds the raw weights and, beside them, the average.
    raw_model = experiment.build_model(cfg, steps_per_epoch=4, precision=experiment.resolve_precision(cfg))
    raw_model.load_weights(str(tmp_path / "ema" / "checkpoints" / "epoch-02.weights.h5"))
    raw = [w.numpy() for w in raw_model.classifier.trainable_weights]
    average = raw_model.weight_average.get_values()
    shipped = keras.saving.load_model(str(tmp_path / "ema" / "model.keras"))
    for a, s in zip(average, [w.numpy() for w in shipped.trainable_weights]):
        np.testing.assert_array_equal(a, s)
    assert max(np.abs(r - s.numpy()).max() for r, s in zip(raw, shipped.trainable_weights)) > 1e-4
    # The export serves the average too.
    x = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    served = savedmodel.load_classifier(results["export_path"]).model_fn(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, shipped(x), rtol=1e-4, atol=1e-5)
    assert np.abs(served - raw_model.classifier(x).numpy()).max() > 1e-4
