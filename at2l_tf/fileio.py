"""Atomic writes: results land whole or not at all (write to a temp file, then rename)."""

import json
import os
import tempfile


def atomic_write(path, write, binary=False):
    """Calls `write(file)` on a temporary file beside `path`, then renames it to `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file in the same directory."""
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path, obj):
    """Writes `obj` as indented JSON to `path`, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
