r"""Export a trained classifier (`model.keras`) as a TF Serving SavedModel.

    python -m at2l_tf.export --model_path=runs/mnist_at2l/model.keras \
        --export_dir=savedmodels/mnist_at2l

`python -m at2l_tf.train` already exports at the end of a run; this command
re-exports a saved `.keras` classifier, e.g. from another machine or after
fine-tuning. The version is one more than the newest under `--export_dir`
unless `--version` is given; versions are written atomically and never
overwritten.
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
    from at2l_tf import savedmodel

    model = savedmodel.load_keras_model(FLAGS.model_path)
    metadata = {"source": os.path.abspath(FLAGS.model_path)}
    if FLAGS.dataset:
        metadata["dataset"] = FLAGS.dataset
    version_dir = os.path.join(FLAGS.export_dir, str(FLAGS.version)) if FLAGS.version else None
    if version_dir and os.path.exists(version_dir):
        raise ConfigError(f"export version already exists: {version_dir}")
    path = savedmodel.export_saved_model(
        model, FLAGS.export_dir, version=FLAGS.version, metadata=metadata
    )
    print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "export")
