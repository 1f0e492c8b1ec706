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

Records keep the names they were written with. Where a name has changed since
(`RENAMED`: the training recipe is the *objective*, the triplet's distance is
`triplet_distance`; they were `defense` and `norm`), every reader maps the old
name to the new one here (`renamed`; `read` and `flatten` do it), so that an
old record reads, compares and resumes as a new one: the committed results,
the shipped exports' `at2l_metadata.json`, a backup's identity, a search's
`search.json`, `summary.json` and KerasTuner trials, a study's JSON.
"""

import json
import os

from at2l_tf import fileio
from at2l_tf.errors import ConfigError

IDENTITY_FILE = "identity.json"
REMEDY = "use another --workdir, or delete it to start again"

# Settings renamed in `TrainConfig` and among a search's hyperparameters: old -> new.
RENAMED_SETTINGS = {"defense": "objective", "norm": "triplet_distance"}
# The names a record's keys had before, by the key of the dict that holds them
# (None: the record's top level): old -> new.
RENAMED = {
    None: {"defense": "objective"},  # at2l_metadata.json, evaluate's JSON
    "train": RENAMED_SETTINGS,  # a recorded ExperimentConfig (results.json, metadata, search.json, backups)
    "hyperparameters": RENAMED_SETTINGS,  # a search's trial (summary.json)
    "tuned": RENAMED_SETTINGS,  # a trial's searched values (summary.json), the searched names (search.json)
    "best": RENAMED_SETTINGS,  # a study's best trial (benchmarks/study_runs.py)
    "search_space": {"defenses": "objectives", "norms": "triplet_distances"},  # search.json, summary.json
    # results.json: the recipe was "defense" and its loss "objective".
    "training": {"defense": "objective", "objective": "loss"},
}


def flatten(d, defaults=None):
    """`d` as `{dotted key: JSON value}`, old names `renamed`; keys missing from `d` take their
    value from `defaults` (settings added after `d` was recorded)."""
    flat = _flatten(defaults or {})
    flat.update(_flatten(renamed(d)))
    return flat


def renamed(record, parent=None):
    """`record` (a JSON value, nested or flattened) with the old names of `RENAMED` replaced.

    A dict's keys are renamed by the rule of the key that holds it (`parent`;
    a dotted key `train.defense` by the segment before its last); a rule
    applies to a dict only if the dict holds one of its old names that is no
    rule's new name, so that a record written with the new names is returned
    as it is (`training`'s `objective` is the loss in an old record only). A
    list's strings are renamed too (the names a search tunes). Values are
    never changed.
    """
    if isinstance(record, list):
        names = RENAMED[parent] if parent in _RENAMED_LISTS else {}
        return [names.get(v, v) if isinstance(v, str) else renamed(v, parent) for v in record]
    if not isinstance(record, dict):
        return record
    where = {k: (k.rsplit(".", 2)[-2] if "." in k else parent, k.rsplit(".", 1)[-1]) for k in record}
    old = {p for p, name in where.values() if name in set(RENAMED.get(p, {})) - set(RENAMED.get(p, {}).values())}
    out = {}
    for k, v in record.items():
        p, name = where[k]
        new = RENAMED[p].get(name, name) if p in old else name
        out[k[: len(k) - len(name)] + new] = renamed(v, name)
    return out


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
    """The identity recorded in the JSON file `path` (old names `renamed`), or None if there is none.

    Raises:
        ConfigError: one line, if the file exists but cannot be read as JSON.
    """
    try:
        with open(path) as fh:
            return renamed(json.load(fh))
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


# Parents whose lists hold names (the searched hyperparameters), not values.
_RENAMED_LISTS = ("tuned",)

__all__ = ["IDENTITY_FILE", "REMEDY", "RENAMED", "RENAMED_SETTINGS", "check_identity", "differences", "flatten",
           "read", "renamed", "require_same"]
