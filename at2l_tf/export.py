r"""Export a trained classifier (`model.keras`) as a TF Serving SavedModel.

    python -m at2l_tf.export --model_path=runs/mnist_at2l/model.keras \
        --export_dir=savedmodels/mnist_at2l

`python -m at2l_tf.train` already exports at the end of a run; this command
re-exports a saved `.keras` classifier, e.g. from another machine or after
fine-tuning. The version is one more than the newest under `--export_dir`
unless `--version` is given; versions are written atomically and never
overwritten.

    python -m at2l_tf.export --model_path=runs/mnist_none/model.keras \
        --preprocessing=defense_gan --generator=savedmodels/mnist_generator \
        --export_dir=savedmodels/mnist_defense_gan

puts Defense-GAN's projection (L = `--dgan_steps`, R = `--dgan_restarts`) in
front of a classifier trained without it (on clean data, or with
`--objective=tr`), as Samangouei et al. do; the export carries a copy of the
generator. The projection masks gradients: evaluate the export with
`evaluate --adaptive=auto` (BPDA through the projection).

The serving signature refuses images with NaN, Inf or values outside [0, 1]
(`INVALID_ARGUMENT` through TF Serving), the domain that robustness is measured
on; `--serving_input_check=off` exports without the check, for clients that clip
upstream. `evaluate --record` then writes the measured robustness into the
version (`assets/robustness.json`), and `evaluate --show=DIR` prints it.
"""

import os

from absl import flags

from at2l_tf import cli
from at2l_tf.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the command's flags; called only when run as a command, so that
    importing this module beside `at2l_tf.train` (same flag names) is safe."""
    fv = flag_values
    flags.DEFINE_string(
        "model_path", None, "A .keras classifier (images -> logits).", flag_values=fv
    )
    flags.DEFINE_string(
        "export_dir", None, "Export root; the model goes to <export_dir>/<version>/.", flag_values=fv
    )
    flags.DEFINE_integer("version", None, "Version number (default: newest + 1).", flag_values=fv)
    flags.DEFINE_string("dataset", None, "Dataset name recorded in the metadata.", flag_values=fv)
    flags.DEFINE_string(
        "preprocessing", "none", "Test-time defence layer put in front: none | defense_gan.", flag_values=fv
    )
    flags.DEFINE_string(
        "generator", None, "defense_gan: the generator (.keras or directory).", flag_values=fv
    )
    flags.DEFINE_integer("dgan_steps", 50, "defense_gan: L, steps per restart (paper 200).", flag_values=fv)
    flags.DEFINE_integer("dgan_restarts", 4, "defense_gan: R, restarts (paper 10).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "defense_gan: seed of the random starts.", flag_values=fv)
    flags.DEFINE_enum(
        "serving_input_check", "on", ["on", "off"],
        "on: the serving signature refuses images with NaN, Inf or values outside [0, 1] "
        "(INVALID_ARGUMENT in TF Serving); off: for clients that clip upstream.",
        flag_values=fv,
    )
    return flag_values


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model_path or not FLAGS.export_dir:
        raise ConfigError("--model_path and --export_dir are required")
    if not FLAGS.model_path.endswith(".keras"):
        raise ConfigError(f"--model_path must be a .keras file, received {FLAGS.model_path}")
    if FLAGS.version is not None and FLAGS.version < 1:
        raise ConfigError(f"version must be >= 1, received version={FLAGS.version}")
    if FLAGS.preprocessing not in ("none", "defense_gan"):
        raise ConfigError(
            f"export can put only a test-time layer in front: none | defense_gan, "
            f"received preprocessing={FLAGS.preprocessing!r}"
        )
    if FLAGS.preprocessing == "defense_gan":
        if not FLAGS.generator:
            raise ConfigError("--preprocessing=defense_gan needs --generator=PATH")
        for name in ("dgan_steps", "dgan_restarts"):
            if FLAGS[name].value < 1:
                raise ConfigError(f"{name} must be >= 1, received {name}={FLAGS[name].value}")
    from at2l_tf import defenses, savedmodel

    model = savedmodel.load_keras_model(FLAGS.model_path)
    if FLAGS.preprocessing == "defense_gan":
        shape = tuple(model.input_shape[1:])
        layer = defenses.make_layer(
            "defense_gan", shape, generator=FLAGS.generator, dgan_steps=FLAGS.dgan_steps,
            dgan_restarts=FLAGS.dgan_restarts, seed=FLAGS.seed,
        )
        model = defenses.defended_model(layer, model, shape)
    metadata = {"source": os.path.abspath(FLAGS.model_path)}
    if FLAGS.dataset:
        metadata["dataset"] = FLAGS.dataset
    version_dir = os.path.join(FLAGS.export_dir, str(FLAGS.version)) if FLAGS.version else None
    if version_dir and os.path.exists(version_dir):
        raise ConfigError(f"export version already exists: {version_dir}")
    path = savedmodel.export_saved_model(
        model, FLAGS.export_dir, version=FLAGS.version, metadata=metadata,
        input_check=FLAGS.serving_input_check == "on",
    )
    print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "export")
