"""Test set-up shared by the whole suite.

Two logical CPU devices are configured before TensorFlow initialises, so that
`tf.distribute.MirroredStrategy` can be tested with two replicas on one CPU.
"""

# at2l_tf first, so TensorFlow loads with the package's environment defaults
# (oneDNN on, quiet C++ logs), as it does for the command-line tools.
import at2l_tf  # noqa: F401  # isort: skip
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402
from absl import flags  # noqa: E402


@pytest.fixture
def parse():
    """`parse(*args)`: the train command's flags parsed into an (unvalidated) `ExperimentConfig`."""
    from at2l_tf import train

    def _parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", *args])
        return train.config_from_flags()

    yield _parse
    flags.FLAGS.unparse_flags()
