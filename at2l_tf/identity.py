"""Is this directory the same run? One check and one message for every command that resumes.

A run records its *identity* in its directory: the settings that decide its
results, as a JSON-ready dict. A later run given the same directory compares
its own identity with the recorded one and continues only if they agree;
otherwise it stops, before anything in the directory is changed, with one
line that lists every setting that differs:

    workdir runs/x holds a finished run (runs/x/results.json) with other settings
    (attack.name: 'pgd' -> 'fgsm'; train.epochs: 7 -> 3); use another --workdir, or
    delete it to start again

Identities are compared key by key after flattening nested dicts into dotted
keys (`train.epochs`) and normalising values as JSON does (a tuple equals the
list read back from disk). Every difference is listed: one changed setting may
change others (a step count changes the default step size).
"""

import json
import os

from at2l_tf import fileio
from at2l_tf.errors import ConfigError

IDENTITY_FILE = "identity.json"
REMEDY = "use another --workdir, or delete it to start again"


def flatten(d, defaults=None):
    """`d` as `{dotted key: JSON value}`; keys missing from `d` take their value from `defaults`
    (settings added after `d` was recorded)."""
    flat = _flatten(defaults or {})
    flat.update(_flatten(d))
    return flat


def differences(recorded, current, *, ignore=()):
    """`["key: recorded -> current", ...]` for every setting that differs, by key.

    Args:
        recorded, current: identities (nested or flat dicts).
        ignore: keys that may differ; a key also covers the keys under it
            (`"eval"` covers `eval.num_examples`).
    """
    old, new = flatten(recorded), flatten(current)
    keys = sorted(k for k in old.keys() | new.keys()
                  if not any(k == i or k.startswith(i + ".") for i in ignore))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def require_same(recorded, current, *, where, what, remedy=REMEDY, ignore=()):
    """Raises the one-line `ConfigError` unless `recorded` and `current` agree (see `differences`).

    Args:
        where: the directory as the user named it, e.g. `f"workdir {path}"`.
        what: what it holds, e.g. `"a finished run"`, `"a search"`, `"an evaluation"`.
        remedy: what the user can do, after the list of differences.
    """
    diffs = differences(recorded, current, ignore=ignore)
    if diffs:
        raise ConfigError(f"{where} holds {what} with other settings ({'; '.join(diffs)}); {remedy}")


def read(path, remedy=REMEDY):
    """The identity recorded in the JSON file `path`, or None if there is none.

    Raises:
        ConfigError: one line, if the file exists but cannot be read as JSON.
    """
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path} ({e}); {remedy}") from None


def check_identity(directory, identity, *, what="a run", label="workdir", filename=IDENTITY_FILE,
                   remedy=REMEDY, ignore=(), defaults=None):
    """Records `identity` in `directory` on first use; on later use, refuses another one.

    Args:
        directory: the run's directory (created if needed).
        identity: this run's settings, a JSON-ready dict.
        what, label, remedy: words of the error (`require_same`).
        filename: the identity's file in `directory`.
        ignore: keys that may differ (`differences`).
        defaults: values of keys an older record lacks.

    Returns:
        `"new"` (written now) or `"same"` (the recorded identity agrees).

    Raises:
        ConfigError: one line listing every differing setting; nothing is written then.
    """
    path = os.path.join(directory, filename)
    recorded = read(path, remedy)
    if recorded is None:
        fileio.atomic_write_json(path, identity)
        return "new"
    require_same(flatten(recorded, defaults), identity, where=f"{label} {directory}", what=what,
                 remedy=remedy, ignore=ignore)
    return "same"


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v))
    return out


__all__ = ["IDENTITY_FILE", "REMEDY", "check_identity", "differences", "flatten", "read", "require_same"]
