"""Exceptions that the command-line entry points turn into one-line errors.

Library code raises these (or plain `ValueError` for bad arguments); the entry
points in `at2l_tf.cli` catch them, print `<command>: error: <message>` on one
line and exit with status 1, so users never see a traceback for bad input.
"""


class At2lError(Exception):
    """Base class of the errors the package raises on purpose."""


class DatasetError(At2lError):
    """A dataset is unknown, missing, corrupted or cannot be prepared."""


class ConfigError(At2lError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ModelLoadError(At2lError):
    """A model file or SavedModel exists but cannot be read (corrupt, truncated, foreign)."""


class Interrupted(At2lError):
    """Training stopped on Ctrl-C after writing a backup; the same command resumes it."""


def at_least(name, value, low, *, integer=False):
    """The check behind every "must be >= low" of the configurations.

    Lives here, beside `ConfigError`, rather than in `at2l_tf.config`, so that
    commands that keep TensorFlow out of their start-up (`train_gan`) can use it.

    Raises:
        ConfigError: `name must be >= low, received name=value` (with
            `integer`, also when `value` is not a whole number).
    """
    if value is None or (integer and int(value) != value) or value < low:
        kind = "an integer " if integer else ""
        raise ConfigError(f"{name} must be {kind}>= {low}, received {name}={value}")
