r"""Train Defense-GAN's MNIST generator as a WGAN-GP and ship it.

    python -m at2l_tf.train_gan --flagfile=flags/mnist_wgan.flags
    python -m at2l_tf.train_gan --epochs=1 --max_train_examples=3200 --workdir=/tmp/gan \
        --generator_out=/tmp/gan/generator.keras

The budget is `--epochs`, passes over the (first `--max_train_examples`) MNIST
training images; one epoch is `N / (n_critic · batch_size)` generator steps, each
after `n_critic` critic steps on their own `batch_size` real images
(`at2l_tf.training.wgan.WGANGP`). Each epoch prints one line of losses (and a
Keras progress bar too when stdout is a terminal), writes a checkpoint (both
networks, both optimizers, the random state) under `<workdir>/checkpoints/`, a
sample grid under `<workdir>/samples/` and the history to `<workdir>/history.json`.

Rerun with the same flags, the command **resumes** after the last finished epoch
(same data order: each epoch shuffles with `seed + epoch`); a larger `--epochs`
continues training. A workdir holding a run with another configuration is refused.

At the end it writes, each atomically:

* the generator to `--generator_out`: a `.keras` file, or a directory that gets
  `generator.keras` (what `DefenseGANProjection(generator_path=...)` and
  `--generator` accept), `samples.png` and `results.json`;
* `<workdir>/samples.png`: 8×8 samples from fixed latent codes;
* `<workdir>/results.json`: the configuration, the per-epoch losses and times,
  and the mean reconstruction error of the Defense-GAN projection (`--eval_steps`
  L, `--eval_restarts` R) on the first `--eval_examples` test images.

`--mixed_precision` (`auto` | `off` | `bfloat16` | `float16`, see
`at2l_tf.precision`) sets the policy both networks compute in; the shipped
generator is saved in float32 whatever it is, and a run is not resumed under
another policy than the one that started it.

Bad input (a count < 1, a negative weight, an unwritable path, a workdir of
another configuration, ...) ends with one line on stderr and exit status 1.
"""

import dataclasses
import json
import os
import sys
import time

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
from at2l_tf import fileio, identity
from at2l_tf.errors import ConfigError, at_least
from at2l_tf.log import log

PROG = "train_gan"
GENERATOR_FILE = "generator.keras"  # Same name as defenses.defense_gan.GENERATOR_FILE.
CONFIG_FILE = "gan_config.json"
HISTORY_FILE = "history.json"
# The configuration that makes a run; the others (budget, outputs, final check)
# may change between a run and its resumption.
_RUN_KEYS = ("batch_size", "latent_dim", "n_critic", "gp_weight", "learning_rate", "beta_1",
             "beta_2", "max_train_examples", "seed")


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """One WGAN-GP run on MNIST; defaults are Defense-GAN's MNIST settings."""

    workdir: str = "runs/mnist_wgan"
    generator_out: str = "savedmodels/mnist_generator"
    epochs: int = 10
    batch_size: int = 64
    latent_dim: int = 128
    n_critic: int = 5
    gp_weight: float = 10.0
    learning_rate: float = 1e-4
    beta_1: float = 0.5
    beta_2: float = 0.9
    max_train_examples: int = None
    seed: int = 0
    eval_examples: int = 100
    eval_steps: int = 100
    eval_restarts: int = 5
    eval_batch_size: int = 100
    mixed_precision: str = "off"

    def to_dict(self):
        return dataclasses.asdict(self)

    def validate(self):
        """Raises `ConfigError` naming the first bad value; returns `self`."""
        for name in ("epochs", "batch_size", "latent_dim", "n_critic", "eval_steps",
                     "eval_restarts", "eval_batch_size"):
            at_least(name, getattr(self, name), 1, integer=True)
        at_least("eval_examples", self.eval_examples, 0, integer=True)
        if self.max_train_examples is not None:
            at_least("max_train_examples", self.max_train_examples, 1, integer=True)
        if not self.gp_weight >= 0:
            raise ConfigError(f"gp_weight must be >= 0, received gp_weight={self.gp_weight}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, received learning_rate={self.learning_rate}")
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), received {name}={getattr(self, name)}")
        from at2l_tf import precision

        if self.mixed_precision not in precision.CHOICES:
            raise ConfigError(
                f"unknown mixed_precision {self.mixed_precision!r}; known: {', '.join(precision.CHOICES)}"
            )
        if not self.workdir:
            raise ConfigError("workdir must not be empty")
        if not self.generator_out:
            raise ConfigError("generator_out must not be empty")
        _check_writable("workdir", self.workdir, directory=True)
        _check_writable("generator_out", self.generator_out,
                        directory=not self.generator_out.endswith(".keras"))
        return self

    @property
    def generator_file(self):
        """The `.keras` file written: `generator_out` itself or `generator_out/generator.keras`."""
        if self.generator_out.endswith(".keras"):
            return self.generator_out
        return os.path.join(self.generator_out, GENERATOR_FILE)

    @property
    def checkpoint_dir(self):
        """`<workdir>/checkpoints`: the resumable training state."""
        return os.path.join(self.workdir, "checkpoints")

    @property
    def history_path(self):
        """`<workdir>/history.json`: one row per finished epoch."""
        return os.path.join(self.workdir, HISTORY_FILE)


def _check_writable(name, path, directory):
    """Raises `ConfigError` unless `path` can be created or written."""
    if os.path.exists(path):
        if directory and not os.path.isdir(path):
            raise ConfigError(f"{name} {path!r} exists and is not a directory")
        if not directory and os.path.isdir(path):
            raise ConfigError(f"{name} {path!r} is a directory, expected a .keras file")
        target = path if directory else os.path.dirname(os.path.abspath(path))
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{name} {path!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ConfigError(f"{name} {path!r} cannot be created: {parent!r} is not a writable directory")


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags on `flag_values` and returns it (tests pass a fresh
    `flags.FlagValues()`: `at2l_tf.train` defines some of the same names globally)."""
    d = GANConfig()
    fv = flag_values
    flags.DEFINE_string("workdir", d.workdir, "Checkpoints, samples, history and results.json.", flag_values=fv)
    flags.DEFINE_string("generator_out", d.generator_out, "Where the trained generator goes: a .keras file, or a directory that gets generator.keras, samples.png and results.json.", flag_values=fv)
    flags.DEFINE_integer("epochs", d.epochs, "Passes over the training images (the budget); one epoch is N/(n_critic*batch_size) generator steps.", flag_values=fv)
    flags.DEFINE_integer("batch_size", d.batch_size, "Real images per critic step (and latent codes per generator step).", flag_values=fv)
    flags.DEFINE_integer("latent_dim", d.latent_dim, "Size of the latent code z (128 in the paper).", flag_values=fv)
    flags.DEFINE_integer("n_critic", d.n_critic, "Critic steps per generator step.", flag_values=fv)
    flags.DEFINE_float("gp_weight", d.gp_weight, "λ, weight of the gradient penalty.", flag_values=fv)
    flags.DEFINE_float("learning_rate", d.learning_rate, "Adam learning rate of both networks.", flag_values=fv)
    flags.DEFINE_float("beta_1", d.beta_1, "Adam β1 of both networks.", flag_values=fv)
    flags.DEFINE_float("beta_2", d.beta_2, "Adam β2 of both networks.", flag_values=fv)
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images.", flag_values=fv)
    flags.DEFINE_string("mixed_precision", d.mixed_precision, "Precision of both networks: auto | off | bfloat16 | float16 (at2l_tf.precision); the generator is saved in float32.", flag_values=fv)
    flags.DEFINE_integer("seed", d.seed, "Random seed (weights, latent codes, data order).", flag_values=fv)
    flags.DEFINE_integer("eval_examples", d.eval_examples, "Test images of the final reconstruction check (0 skips it).", flag_values=fv)
    flags.DEFINE_integer("eval_steps", d.eval_steps, "L of the projection in the final check.", flag_values=fv)
    flags.DEFINE_integer("eval_restarts", d.eval_restarts, "R of the projection in the final check.", flag_values=fv)
    return fv


def config_from_flags(fv=flags.FLAGS):
    """Maps parsed flags onto a `GANConfig` (not yet validated)."""
    return GANConfig(
        workdir=fv.workdir, generator_out=fv.generator_out, epochs=fv.epochs,
        batch_size=fv.batch_size, latent_dim=fv.latent_dim, n_critic=fv.n_critic,
        gp_weight=fv.gp_weight, learning_rate=fv.learning_rate, beta_1=fv.beta_1,
        beta_2=fv.beta_2, max_train_examples=fv.max_train_examples, seed=fv.seed,
        eval_examples=fv.eval_examples, eval_steps=fv.eval_steps,
        eval_restarts=fv.eval_restarts, mixed_precision=fv.mixed_precision,
    )


def _check_same_run(config, policy="float32"):
    """Writes `<workdir>/gan_config.json`, or refuses a workdir of another configuration
    (`at2l_tf.identity`: one line listing every difference).

    `policy` is the resolved Keras dtype policy (a run started in one precision
    is not continued in another); records from before mixed precision were float32.
    """
    mine = {**{k: getattr(config, k) for k in _RUN_KEYS}, "precision": policy}
    identity.check_identity(config.workdir, mine, filename=CONFIG_FILE, defaults={"precision": "float32"})


def _train_images(config):
    from at2l_tf import data

    images, _ = data.load_mnist_arrays("train")
    if config.max_train_examples is not None:
        images = images[: config.max_train_examples]
    per_step = config.n_critic * config.batch_size
    if len(images) < per_step:
        raise ConfigError(
            f"{len(images)} training images make no full generator step of n_critic*batch_size="
            f"{per_step} images: raise max_train_examples or lower batch_size"
        )
    return images


def _epoch_dataset(images, config, epoch):
    """Epoch `epoch`'s batches of `n_critic · batch_size` images in [0, 1], shuffled with
    `seed + epoch` (so a resumed run sees the order an uninterrupted one would)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images)  # uint8: a 4× smaller shuffle buffer
    ds = ds.shuffle(len(images), seed=config.seed + epoch, reshuffle_each_iteration=False)
    ds = ds.batch(config.n_critic * config.batch_size, drop_remainder=True)
    return ds.map(lambda x: tf.cast(x, tf.float32) / 255.0).prefetch(2)


def sample_grid_png(generator, path, *, seed=0, rows=8):
    """Writes a `rows × rows` grid of samples `G(z)`, `z` fixed by `seed`, to `path` (PNG), atomically."""
    import numpy as np
    from matplotlib.figure import Figure

    latent_dim = int(generator.inputs[0].shape[-1])
    z = np.random.default_rng(seed).standard_normal((rows * rows, latent_dim)).astype("float32")
    images = np.asarray(generator(z, training=False))[..., 0]
    h, w = images.shape[1:3]
    grid = images.reshape(rows, rows, h, w).transpose(0, 2, 1, 3).reshape(rows * h, rows * w)
    fig = Figure(figsize=(6, 6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)


def _save_generator(generator, path):
    """`generator.save(path)` through a temporary `.keras` file beside it, then a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        generator.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def reconstruction_check(generator_path, *, num_examples, steps, restarts, seed=0,
                         batch_size=100):
    """The projection's error on the first `num_examples` MNIST test images.

    Returns:
        A dict: `mean_squared_error` (per pixel, the projection's objective) and
        `mean_l2` (`||G(z*) − x||_2`) averaged over the images, the same two for
        the random starts (`start_*`: what the search improves on), `steps`,
        `restarts`, `num_examples`, `seconds_per_image` (wall time on this machine).
    """
    import numpy as np

    from at2l_tf import data
    from at2l_tf.defenses.defense_gan import DefenseGANProjection

    images, _ = data.load_mnist_arrays("test")
    x = images[:num_examples].astype("float32") / 255.0
    layer = DefenseGANProjection(generator_path, steps=steps, restarts=restarts, seed=seed)
    pixels = int(np.prod(layer.image_shape))
    errors, starts = [], []
    started = time.time()
    for i in range(0, len(x), batch_size):
        found = layer.search(x[i:i + batch_size], with_initial=True)
        errors.append(np.asarray(found["errors"]))
        starts.append(np.asarray(found["initial_errors"]).min(axis=1))
    seconds = time.time() - started
    errors, starts = np.concatenate(errors), np.concatenate(starts)
    return {
        "split": "test",
        "num_examples": int(len(x)),
        "steps": steps,
        "restarts": restarts,
        "seed": seed,
        "mean_squared_error": float(errors.mean()),
        "mean_l2": float(np.sqrt(errors * pixels).mean()),
        "start_mean_squared_error": float(starts.mean()),
        "start_mean_l2": float(np.sqrt(starts * pixels).mean()),
        "seconds_per_image": seconds / max(len(x), 1),
    }


def run(config, *, progress_bar=None):
    """Trains (or resumes) the WGAN-GP of `config`, then writes the generator and results.

    Args:
        config: a `GANConfig` (validated here).
        progress_bar: show Keras' progress bar; default when stdout is a terminal.

    Returns:
        The results dict written to `<workdir>/results.json`.
    """
    config.validate()
    prec = _resolve_precision(config)
    os.makedirs(config.workdir, exist_ok=True)
    _check_same_run(config, prec.policy)
    images = _train_images(config)
    _check_budget(config)
    if progress_bar is None:
        progress_bar = sys.stdout.isatty()
    gan = _build_gan(config, prec)
    epoch_var, manager, history = _resume(config, gan)
    _train(config, gan, images, epoch_var, manager, history, progress_bar)
    return _finish(config, gan, len(images), history, prec)


def _resolve_precision(config):
    """The `precision.Precision` of `config.mixed_precision`, said on the run's first line."""
    from at2l_tf import precision as precision_lib

    prec = precision_lib.resolve(config.mixed_precision)
    log(prec.describe())
    if prec.warning:
        log(f"warning: {prec.warning}")
    return prec


def _check_budget(config):
    """Refuses a workdir whose latest checkpoint holds more epochs than the budget, `config.epochs`."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(config.checkpoint_dir)
    if latest is not None:
        done = int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        if done > config.epochs:
            raise ConfigError(
                f"workdir {config.workdir!r} already holds {done} epochs, more than "
                f"epochs={config.epochs}"
            )


def _build_gan(config, prec):
    """The compiled `WGANGP`: its networks in `prec`'s policy, the wrapper in float32."""
    import keras

    from at2l_tf import precision as precision_lib
    from at2l_tf.models import gan as gan_models
    from at2l_tf.training.wgan import WGANGP

    keras.utils.set_random_seed(config.seed)
    with precision_lib.policy_scope(prec):  # The networks only; the wrapper stays float32.
        generator, critic = gan_models.mnist_generator(config.latent_dim), gan_models.mnist_critic()
    gan = WGANGP(generator, critic, n_critic=config.n_critic, gp_weight=config.gp_weight, seed=config.seed)

    def adam():
        return precision_lib.wrap_optimizer(keras.optimizers.Adam(
            learning_rate=config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2), prec)

    gan.compile(adam(), adam())
    return gan


def _resume(config, gan):
    """`(epoch counter, checkpoint manager, history)`, restored from the latest checkpoint if any."""
    import tensorflow as tf

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = gan.checkpoint(epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, config.checkpoint_dir, max_to_keep=2)
    history = []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if os.path.exists(config.history_path):
            with open(config.history_path) as f:
                history = json.load(f)
        history = history[: int(epoch_var.numpy())]
        log(f"resumed from {manager.latest_checkpoint} after epoch {int(epoch_var.numpy())}")
    return epoch_var, manager, history


def _train(config, gan, images, epoch_var, manager, history, progress_bar):
    """Epochs `epoch_var + 1`..`config.epochs`, each checkpointed, with its history row and samples."""
    done = int(epoch_var.numpy())
    steps_per_epoch = len(images) // (config.n_critic * config.batch_size)
    log(
        f"training the WGAN-GP on {len(images)} MNIST images: epochs {done + 1}..{config.epochs}, "
        f"{steps_per_epoch} generator steps per epoch (n_critic={config.n_critic}, "
        f"batch_size={config.batch_size})"
    )
    for epoch in range(done, config.epochs):
        started = time.time()
        fit = gan.fit(_epoch_dataset(images, config, epoch), epochs=1,
                      verbose=1 if progress_bar else 0, shuffle=False)
        seconds = time.time() - started
        row = {k: float(v[-1]) for k, v in fit.history.items()}
        row.update(epoch=epoch + 1, seconds=round(seconds, 1),
                   generator_steps=int(gan.generator_optimizer.iterations.numpy()))
        history.append(row)
        epoch_var.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        fileio.atomic_write_json(config.history_path, history)
        sample_grid_png(gan.generator, os.path.join(config.workdir, "samples",
                                                    f"epoch-{epoch + 1:03d}.png"), seed=config.seed)
        log(
            f"epoch {epoch + 1}/{config.epochs}: critic_loss={row['critic_loss']:.4f} "
            f"generator_loss={row['generator_loss']:.4f} gradient_penalty={row['gradient_penalty']:.4f} "
            f"wasserstein={row['wasserstein']:.4f} ({seconds:.0f} s, "
            f"{seconds / max(steps_per_epoch, 1):.2f} s/generator step)"
        )


def _finish(config, gan, train_images, history, prec):
    """The float32 generator, the samples, the reconstruction check and `results.json`."""
    from at2l_tf import precision as precision_lib

    generator_file = config.generator_file
    _save_generator(precision_lib.to_float32(gan.generator), generator_file)  # Shipped in float32.
    log(f"wrote the generator to {generator_file}")
    samples = os.path.join(config.workdir, "samples.png")
    sample_grid_png(gan.generator, samples, seed=config.seed)
    results = {
        "config": config.to_dict(),
        "generator_path": generator_file,
        "samples_png": samples,
        "epochs": config.epochs,
        "train_images": train_images,
        "generator_steps": int(gan.generator_optimizer.iterations.numpy()),
        "critic_steps": int(gan.optimizer.iterations.numpy()),
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "history": history,
        "precision": precision_lib.summary_line(prec),
    }
    if config.eval_examples > 0:
        results["reconstruction"] = _reconstruction(config, generator_file)
    if not config.generator_out.endswith(".keras"):
        sample_grid_png(gan.generator, os.path.join(config.generator_out, "samples.png"),
                        seed=config.seed)
        fileio.atomic_write_json(os.path.join(config.generator_out, "results.json"), results)
    fileio.atomic_write_json(os.path.join(config.workdir, "results.json"), results)
    log(f"wrote {os.path.join(config.workdir, 'results.json')}")
    return results


def _reconstruction(config, generator_file):
    """`reconstruction_check` of the shipped generator on `config.eval_examples` test images, logged."""
    log(f"projecting the first {config.eval_examples} test images (L={config.eval_steps}, "
         f"R={config.eval_restarts})")
    rec = reconstruction_check(
        generator_file, num_examples=config.eval_examples, steps=config.eval_steps,
        restarts=config.eval_restarts, seed=config.seed, batch_size=config.eval_batch_size,
    )
    log(f"reconstruction error: MSE {rec['mean_squared_error']:.4f}, L2 {rec['mean_l2']:.3f} "
         f"(random starts: {rec['start_mean_squared_error']:.4f}, "
         f"{rec['start_mean_l2']:.3f}); {rec['seconds_per_image']:.3f} s/image")
    return rec


def run_from_flags(fv=flags.FLAGS, **kwargs):
    """Validates the flags and runs; returns the results dict."""
    return run(config_from_flags(fv).validate(), **kwargs)


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    run_from_flags(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    cli.run(main, PROG)
