"""Shared glue of the absl entry points (`train`, `evaluate`, `export`).

Entry points parse flags and call library functions; the library never reads
flags. This module only turns the errors a user can cause into one line on
stderr and a non-zero exit status, instead of a traceback.
"""

import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns the
# progress output on CPU machines; users can still raise it with the variable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from at2l_tf.errors import At2lError, Interrupted  # noqa: E402


def _one_line(message):
    """The message of an error on one line (absl's can span several)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    # absl prefixes some flagfile errors with "ERROR::".
    return "; ".join(lines).removeprefix("ERROR:: ")


def fail(prog, message):
    """Prints `<prog>: error: <message>` on one line to stderr and exits with status 1."""
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    sys.exit(1)


def parse_flags(prog, argv, flag_values=None, removed=None):
    """Parses `argv` into `flag_values` (default `flags.FLAGS`); on a parsing
    error, prints `<prog>: error: <message>` on one line and exits with status 1.

    `removed` maps flags the command no longer has to their replacements
    (`removed_flag_message`).
    """
    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        return flag_values(argv)
    except flags.Error as e:
        fail(prog, removed_flag_message(e, removed) or e)


def removed_flag_message(error, removed):
    """`--norm was removed: use --triplet_distance, received --norm=l2` when the absl
    parsing `error` is about a flag of `removed` (old name -> replacement), else None."""
    if isinstance(error, flags.UnrecognizedFlagError) and error.flagname in (removed or {}):
        # flagvalue: the argument as given, `--norm=l2`.
        return f"--{error.flagname} was removed: use --{removed[error.flagname]}, received {error.flagvalue}"
    return None


def run(main, prog, removed=None):
    """Runs `main` under `absl.app.run`, reporting user errors on one line.

    Flag-parsing errors (an unknown flag, `--epochs=two`, a missing flagfile)
    are reported as `<prog>: error: ...` too, not with absl's two-line
    "FATAL Flags parsing error" and its hint; `--help` still works.

    Args:
        main: the entry point's `main(argv)`.
        prog: command name used as the prefix of error messages.
        removed: flags the command no longer has -> their replacements (`parse_flags`).
    """

    def _parse(argv):
        return parse_flags(prog, argv, removed=removed)

    def _guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow's SavedModel writer logs every asset at INFO level.
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except Interrupted as e:  # Ctrl-C during training: a backup was written.
            print(f"{prog}: {e}", file=sys.stderr)
            sys.exit(130)
        except (At2lError, FileNotFoundError) as e:
            fail(prog, str(e).strip().splitlines()[0] if str(e).strip() else repr(e))

    app.run(_guarded, flags_parser=_parse)
