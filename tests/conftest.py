"""Test set-up shared by the whole suite.

Two logical CPU devices are configured before TensorFlow initialises, so that
`tf.distribute.MirroredStrategy` can be tested with two replicas on one CPU.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
