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


import importlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.fixture(scope="session")
def repo_python():
    """`repo_python(*argv, timeout=600)`: `python *argv` as a user runs the repository's scripts.

    From the repository root (`benchmarks/speed.py ...` and `-c` code that puts `benchmarks` on
    `sys.path` both resolve), with this checkout's package first on PYTHONPATH (an installed
    at2l_tf may be another version) and TensorFlow's C++ logs quiet. A fresh process also keeps
    the absl flags a script defines on import out of this one's. Returns the finished
    `subprocess.CompletedProcess`, output as text.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))

    def _run(*argv, timeout=600):
        return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                              env=env, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def benchmarks_module():
    """`benchmarks_module(name)`: a module of benchmarks/ (`"study_runs"`, `"studies.triplet"`)
    imported as the scripts there import each other, by name with benchmarks/ on `sys.path`."""

    def _import(name):
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.pop(0)

    return _import
