"""WGAN-GP: the gradient penalty by hand, the critic/generator step ratio, and the
`train_gan` command end to end (train, resume, refuse another configuration, bad input)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from at2l_tf import models, train_gan
from at2l_tf.defenses.defense_gan import DefenseGANProjection
from at2l_tf.errors import ConfigError
from at2l_tf.models import gan as gan_models
from at2l_tf.training.wgan import WGANGP, gradient_penalty

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
SHAPE = (4, 3, 2)  # H, W, C of the hand computations: every axis a different size


def _linear_critic(w, b=0.3):
    critic = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
    critic.layers[-1].set_weights([w.reshape(-1, 1), np.array([b], "float32")])
    return critic


def _data(n=5, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.uniform(size=(n,) + SHAPE).astype("float32")
    fake = rng.uniform(size=(n,) + SHAPE).astype("float32")
    eps = rng.uniform(size=(n,)).astype("float32")
    return real, fake, eps


def test_gradient_penalty_of_a_linear_critic_is_known_in_closed_form():
    # D(x) = <w, x> + b: the gradient is w everywhere, so the penalty is (||w||_2 - 1)^2.
    w = np.random.default_rng(1).normal(size=SHAPE).astype("float32")
    real, fake, eps = _data()
    gp = float(gradient_penalty(_linear_critic(w), real, fake, eps))
    expected = (np.linalg.norm(w.ravel()) - 1.0) ** 2
    np.testing.assert_allclose(gp, expected, rtol=1e-5)

    # The authors' code sums over axis 1 only (the rows of NHWC): one "norm" per
    # (column, channel), a different number.
    one_axis = np.sqrt(np.sum(w**2, axis=0))
    buggy = np.mean((one_axis - 1.0) ** 2)
    assert abs(buggy - expected) > 0.1 * expected


def test_gradient_penalty_interpolates_per_example():
    # D(x) = sum(x^2): the gradient at x_hat is 2 x_hat, so the penalty depends on
    # where each example's interpolate lies.
    real, fake, eps = _data(n=6, seed=2)

    def critic(x, training=False):
        return tf.reduce_sum(tf.square(x), axis=[1, 2, 3])

    x_hat = real + eps[:, None, None, None] * (fake - real)
    norms = np.linalg.norm(2 * x_hat.reshape(len(x_hat), -1), axis=1)
    expected = np.mean((norms - 1.0) ** 2)
    np.testing.assert_allclose(float(gradient_penalty(critic, real, fake, eps)), expected, rtol=1e-5)
    # eps = 0 puts every interpolate on the real image, eps = 1 on the fake.
    at_real = np.mean((np.linalg.norm(2 * real.reshape(6, -1), axis=1) - 1) ** 2)
    np.testing.assert_allclose(
        float(gradient_penalty(critic, real, fake, np.zeros(6, "float32"))), at_real, rtol=1e-5
    )


def test_gradient_penalty_is_differentiable_in_the_critic_weights():
    w = np.random.default_rng(3).normal(size=SHAPE).astype("float32")
    critic = _linear_critic(w)
    real, fake, eps = _data()
    with tf.GradientTape() as tape:
        gp = gradient_penalty(critic, real, fake, eps)
    kernel_grad = tape.gradient(gp, critic.layers[-1].kernel)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    norm = np.linalg.norm(w.ravel())
    np.testing.assert_allclose(
        np.asarray(kernel_grad).ravel(), 2 * (norm - 1) * w.ravel() / norm, rtol=1e-4, atol=1e-6
    )


def _tiny_gan(n_critic=3, seed=0):
    keras.utils.set_random_seed(seed)
    generator = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8 * 8, activation="sigmoid"),
        keras.layers.Reshape((8, 8, 1)),
    ])
    critic = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same"),
        keras.layers.LeakyReLU(0.2),
        keras.layers.Flatten(),
        keras.layers.Dense(1),
    ])
    gan = WGANGP(generator, critic, n_critic=n_critic, seed=seed)
    gan.compile()
    return gan


def test_one_train_step_takes_n_critic_critic_steps_per_generator_step():
    gan = _tiny_gan(n_critic=3)
    critic_before = [w.copy() for w in gan.critic.get_weights()]
    generator_before = [w.copy() for w in gan.generator.get_weights()]
    real = np.random.default_rng(0).uniform(size=(3 * 16, 8, 8, 1)).astype("float32")
    logs = gan.fit(tf.data.Dataset.from_tensors(real), epochs=1, verbose=0).history
    assert int(gan.critic_optimizer.iterations.numpy()) == 3
    assert int(gan.generator_optimizer.iterations.numpy()) == 1
    assert set(logs) == {"critic_loss", "generator_loss", "gradient_penalty", "wasserstein"}
    assert all(np.isfinite(v[-1]) for v in logs.values())
    assert any(not np.array_equal(a, b) for a, b in zip(critic_before, gan.critic.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(generator_before, gan.generator.get_weights()))
    # The default optimizers are the paper's Adam(1e-4, 0.5, 0.9).
    opt = gan.generator_optimizer
    assert (float(opt.learning_rate), opt.beta_1, opt.beta_2) == pytest.approx((1e-4, 0.5, 0.9))


def test_bad_wgan_arguments_name_the_value():
    with pytest.raises(ValueError, match="n_critic=0"):
        WGANGP(gan_models.mnist_generator(8, width=2), gan_models.mnist_critic(width=2), n_critic=0)


def test_mnist_architecture_and_not_a_classifier():
    generator = gan_models.mnist_generator()
    critic = gan_models.mnist_critic()
    assert generator.input_shape == (None, 128) and generator.output_shape == (None, 28, 28, 1)
    assert critic.input_shape == (None, 28, 28, 1) and critic.output_shape == (None, 1)
    assert generator.get_layer("dense").units == 4 * 4 * 256
    assert [generator.get_layer(f"deconv{i}").filters for i in (1, 2, 3)] == [128, 64, 1]
    assert [critic.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [64, 128, 256]
    images = np.asarray(generator(np.random.default_rng(0).normal(size=(2, 128)).astype("float32")))
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Not offered as a classifier by --model.
    assert not any("generator" in m or "critic" in m or "gan" in m for m in models.available_models())


# --- the command ----------------------------------------------------------------------

# n_critic = 1 keeps the traced step small (the n_critic critic steps are unrolled);
# the step ratio is tested on its own above.
TINY = ("--max_train_examples=48", "--batch_size=8", "--n_critic=1", "--latent_dim=16",
        "--eval_examples=4", "--eval_steps=3", "--eval_restarts=2")


def _run(tmp_path, *args, workdir="w"):
    fv = train_gan.define_flags(flags.FlagValues())
    fv(["train_gan", f"--workdir={tmp_path / workdir}", f"--generator_out={tmp_path / 'gen'}",
        *TINY, *args])
    return train_gan.run_from_flags(fv, progress_bar=False)


def test_train_gan_trains_resumes_and_ships_a_generator(tmp_path, capfd):
    first = _run(tmp_path, "--epochs=1")
    steps_per_epoch = 48 // 8
    assert first["generator_steps"] == steps_per_epoch and first["critic_steps"] == steps_per_epoch
    capfd.readouterr()

    second = _run(tmp_path, "--epochs=2")
    err = capfd.readouterr().err
    assert "resumed from" in err and "after epoch 1" in err
    epoch_lines = [line for line in err.splitlines() if "epoch 2/2:" in line]
    assert len(epoch_lines) == 1 and "epoch 1/2:" not in err  # epoch 1 not trained again
    # The optimizers' step counters came back from the checkpoint.
    assert second["generator_steps"] == 2 * steps_per_epoch
    assert [row["epoch"] for row in second["history"]] == [1, 2]

    workdir, gen = tmp_path / "w", tmp_path / "gen"
    results = json.loads((workdir / "results.json").read_text())
    assert results["generator_steps"] == 2 * steps_per_epoch
    rec = results["reconstruction"]
    assert rec["num_examples"] == 4 and (rec["steps"], rec["restarts"]) == (3, 2)
    assert rec["mean_squared_error"] <= rec["start_mean_squared_error"] + 1e-6
    assert (workdir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (gen / "generator.keras").is_file() and (gen / "samples.png").is_file()
    assert not [p for p in os.listdir(gen) if p.startswith(".tmp")]
    # The directory is what the projection layer accepts.
    layer = DefenseGANProjection(str(gen), steps=1, restarts=1)
    assert layer.latent_dim == 16 and layer.image_shape == (28, 28, 1)

    # Resuming gives the run an uninterrupted one would have given.
    straight = _run(tmp_path, "--epochs=2", workdir="straight")
    assert straight["history"][-1]["critic_loss"] == pytest.approx(
        second["history"][-1]["critic_loss"], rel=1e-4, abs=1e-5)

    # Another configuration in the same workdir is refused; so is a smaller budget.
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(n_critic: 1 -> 2\)"):
        _run(tmp_path, "--epochs=2", "--n_critic=2")
    with pytest.raises(ConfigError, match="already holds 2 epochs, more than epochs=1"):
        _run(tmp_path, "--epochs=1")


def test_bf16_training_ships_a_float32_generator_and_is_not_resumed_in_float32(tmp_path, capfd):
    from at2l_tf import precision

    results = _run(tmp_path, "--epochs=1", "--mixed_precision=bfloat16", "--eval_examples=0")
    assert "precision: mixed_bfloat16" in capfd.readouterr().err
    assert results["precision"]["policy"] == "mixed_bfloat16"
    assert all(np.isfinite(v) for v in results["history"][-1].values())
    generator = keras.models.load_model(tmp_path / "gen" / "generator.keras", compile=False)
    assert precision.policies_of(generator) == {"float32"}
    with pytest.raises(ConfigError, match=r"with other settings \(precision: 'mixed_bfloat16' -> 'float32'\)"):
        _run(tmp_path, "--epochs=2", "--eval_examples=0")


@pytest.mark.parametrize("arg, message", [
    ("--epochs=0", "epochs must be an integer >= 1, received epochs=0"),
    ("--n_critic=0", "n_critic=0"),
    ("--eval_restarts=0", "eval_restarts=0"),
    ("--gp_weight=-1", "gp_weight=-1"),
    ("--max_train_examples=0", "max_train_examples=0"),
    ("--learning_rate=0", "learning_rate=0"),
    ("--mixed_precision=half", "unknown mixed_precision 'half'; known: auto, off, bfloat16, float16"),
])
def test_bad_values_are_refused_before_training(tmp_path, arg, message):
    with pytest.raises(ConfigError, match=message):
        _run(tmp_path, arg)
    assert not (tmp_path / "w").exists()


def test_unwritable_and_too_small_inputs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="workdir .* is not a directory"):
        _run(tmp_path, workdir="file")
    with pytest.raises(ConfigError, match="generator_out .*cannot be created"):
        _run(tmp_path, f"--generator_out={blocker / 'sub' / 'g.keras'}")
    with pytest.raises(ConfigError, match="no full generator step"):
        _run(tmp_path, "--max_train_examples=5")


def test_command_bad_input_is_one_line_and_exit_1(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train_gan", f"--workdir={tmp_path / 'w'}", "--epochs=0"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == ["train_gan: error: epochs must be an integer >= 1, received epochs=0"]


def test_shipped_flagfile_opens_with_its_command():
    path = os.path.join(ROOT, "flags", "mnist_wgan.flags")
    first = open(path).readline()
    assert first.startswith("# python -m at2l_tf.train_gan --flagfile=flags/mnist_wgan.flags")
    fv = train_gan.define_flags(flags.FlagValues())
    fv(["train_gan", f"--flagfile={path}"])
    config = train_gan.config_from_flags(fv).validate()
    assert (config.n_critic, config.gp_weight, config.latent_dim) == (5, 10.0, 128)
    assert config.generator_file == os.path.join("savedmodels", "mnist_generator", "generator.keras")
