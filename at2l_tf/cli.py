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

from at2l_tf.errors import At2lError  # noqa: E402


def run(main, prog):
    """Runs `main` under `absl.app.run`, reporting user errors on one line.

    Args:
        main: the entry point's `main(argv)`.
        prog: command name used as the prefix of error messages.
    """

    def _guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow's SavedModel writer logs every asset at INFO level.
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except (At2lError, FileNotFoundError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            print(f"{prog}: error: {msg}", file=sys.stderr)
            sys.exit(1)

    app.run(_guarded)
