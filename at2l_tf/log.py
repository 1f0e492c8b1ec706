"""One progress line on stderr: `[at2l_tf] message`, flushed at once.

Progress goes to stderr so that stdout keeps a command's result (a table, a
JSON file's path) for pipes. Benchmarks name themselves with `prefix`.
"""

import sys


def log(msg, prefix="at2l_tf"):
    """Prints `[prefix] msg` to stderr and flushes it."""
    print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)


__all__ = ["log"]
