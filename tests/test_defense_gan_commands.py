"""Defense-GAN in the commands: `train --preprocessing=defense_gan`, `export
--preprocessing=defense_gan`, self-contained exports, BPDA by `--adaptive=auto`,
and bad generators as one-line errors before anything is trained."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from at2l_tf import config as config_lib
from at2l_tf import defenses, evaluation, savedmodel
from at2l_tf.errors import ConfigError


def _generator(path, side=28, latent=8):
    keras.utils.set_random_seed(0)
    z = keras.Input((latent,))
    h = keras.layers.Dense(side * side, activation="sigmoid")(z)
    keras.Model(z, keras.layers.Reshape((side, side, 1))(h)).save(path)
    return str(path)


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def _cfg(tmp_path, generator, **preprocessing):
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=64),
        attack=config_lib.AttackConfig(name="fgsm"),
        train=config_lib.TrainConfig(objective="tr", epochs=1),
        eval=config_lib.EvalConfig(num_examples=32, attacks=("fgsm",)),
        preprocessing=config_lib.PreprocessingConfig(
            name="defense_gan", generator=generator, dgan_steps=2, dgan_restarts=2, **preprocessing
        ),
        workdir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )


def test_train_puts_the_projection_in_front_after_training_and_exports_it(tmp_path):
    from at2l_tf import experiment

    gen = _generator(tmp_path / "gen.keras")
    results = experiment.run(_cfg(tmp_path, gen), verbose=0)
    # The classifier was trained without the projection (its checkpoints hold no generator)...
    assert "triplet" in results["history"]
    # ...and the final check ran through it, with BPDA (identity backward) for FGSM.
    assert results["test"]["attacks"]["fgsm"]["adaptive"] == "bpda"
    clf = savedmodel.load_classifier(results["export_path"])
    assert isinstance(clf.preprocessing, defenses.DefenseGANProjection)
    assert (clf.preprocessing.steps, clf.preprocessing.restarts) == (2, 2)
    # The export carries its own generator copy: it loads with the original gone.
    os.remove(gen)
    clf = savedmodel.load_classifier(results["export_path"])
    assert clf.preprocessing.generator_path.startswith(results["export_path"])
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    assert clf.model_fn(x).shape == (4, 10)
    spec = evaluation.adaptive.adapt(
        [evaluation.AttackSpec("pgd", {"eps": 0.1, "steps": 2})],
        layer=clf.preprocessing, net_fn=clf.net_fn, model_fn=clf.model_fn,
    )[0]
    assert spec.adaptive == "bpda"
    assert clf.metadata["preprocessing"]["name"] == "defense_gan"
    assert os.path.exists(os.path.join(results["export_path"], savedmodel.GENERATOR_COPY))
    # model.keras holds the defended model too.
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["config"]["preprocessing"]["generator"] == gen


def test_export_command_wraps_a_trained_classifier(tmp_path):
    gen = _generator(tmp_path / "gen.keras")
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(tmp_path / "clf.keras")
    run = _run("at2l_tf.export", f"--model_path={tmp_path / 'clf.keras'}", f"--export_dir={tmp_path / 'e'}",
               "--preprocessing=defense_gan", f"--generator={gen}", "--dgan_steps=3", "--dgan_restarts=1")
    assert run.returncode == 0, run.stderr[-2000:]
    shutil.move(gen, tmp_path / "moved.keras")
    clf = savedmodel.load_classifier(str(tmp_path / "e"))
    assert defenses.compose.layer_name(clf.preprocessing) == "defense_gan"
    assert clf.preprocessing.steps == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preprocessing=defense_gan", "--generator=/no/such/generator"],
         "generator_path '/no/such/generator' does not exist"),
        (["--preprocessing=defense_gan", "--generator=GEN", "--dgan_steps=0"], "dgan_steps must be >= 1"),
        (["--preprocessing=thermometer"], "only a test-time layer in front: none | defense_gan"),
        (["--preprocessing=defense_gan"], "--preprocessing=defense_gan needs --generator=PATH"),
    ],
)
def test_export_bad_generator_is_one_line(tmp_path, args, message):
    gen = _generator(tmp_path / "gen.keras")
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(
        tmp_path / "clf.keras")
    args = [a.replace("GEN", gen) for a in args]
    run = _run("at2l_tf.export", f"--model_path={tmp_path / 'clf.keras'}", f"--export_dir={tmp_path / 'e'}", *args)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("export: error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-1500:]
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(generator=None), "needs --generator=PATH"),
        (dict(generator="/no/such.keras"), "generator does not exist: /no/such.keras"),
        (dict(dgan_steps=0), "dgan_steps must be >= 1, received dgan_steps=0"),
        (dict(dgan_restarts=0), "dgan_restarts must be >= 1, received dgan_restarts=0"),
    ],
)
def test_train_config_errors(tmp_path, change, message):
    cfg = _cfg(tmp_path, _generator(tmp_path / "gen.keras"))
    for key, value in change.items():
        setattr(cfg.preprocessing, key, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_defense_gan_classifiers_are_trained_clean_or_with_tr(tmp_path):
    cfg = _cfg(tmp_path, _generator(tmp_path / "gen.keras"))
    cfg.train.objective = "at2l"
    with pytest.raises(ConfigError, match="objective none.*or with triplet regularization"):
        cfg.validate()


def test_a_wrong_shaped_generator_stops_train_before_training(tmp_path):
    gen = _generator(tmp_path / "gen8.keras", side=8)
    run = _run("at2l_tf.train", "--preprocessing=defense_gan", f"--generator={gen}", "--objective=none",
               f"--workdir={tmp_path / 'w'}", "--export_dir=", "--max_train_examples=256")
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("train: error:")]
    assert len(errors) == 1 and "makes images of shape (8, 8, 1)" in errors[0], run.stderr[-1500:]
    assert not os.path.exists(tmp_path / "w" / "model.keras")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
