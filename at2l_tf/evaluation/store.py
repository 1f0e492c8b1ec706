"""The work directory of an evaluation: per-batch, per-attack results, written as they come.

`robustness_report` saves one *unit* per (batch, attack) — and one per batch
for the clean pass — as soon as it is computed, and skips the units it finds,
so an evaluation that was killed continues where it stopped. A unit holds, per
example of its batch, whether the target classified it correctly and (attacks)
the L-inf and L2 norms of the perturbation, with the unit's time, seed and the
stages of a composite attack (AutoAttack). Each unit is one small `.npz` file
written to a temporary name and renamed, so a kill at any moment leaves a unit
whole or absent, never half written:

    <workdir>/evaluation.json        the identity of the evaluation (its settings)
    <workdir>/b00003-clean.npz       batch 3, clean pass
    <workdir>/b00003-a01.npz         batch 3, the second attack of the list

The report is computed from the units alone, in batch order, so a resumed run
and an uninterrupted one give the same figures. `pack` / `unpack` turn a set
of units into bytes and back: what workers exchange through collectives.

What the settings must be for a directory to be continued is the caller's rule
(`evaluate` compares `identity()` with its own and refuses another one).
"""

import io
import json
import os
import time

import numpy as np

from at2l_tf import fileio

IDENTITY_FILE = "evaluation.json"
_ARRAYS = ("correct", "linf", "l2")


def unit_key(attack_index=None):
    """The key of a unit: `clean`, or `a<index>` for the attack at `attack_index`."""
    return "clean" if attack_index is None else f"a{attack_index:02d}"


class ResultStore:
    """The units of one evaluation under `workdir`.

    Attributes:
        workdir: the directory.
        restored: units read back from it by `load` so far.
    """

    def __init__(self, workdir):
        self.workdir = workdir
        self.restored = 0

    def identity(self):
        """The recorded identity (a flat dict), or `None` for a new directory."""
        path = os.path.join(self.workdir, IDENTITY_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)["identity"]

    def start(self, identity):
        """Creates the directory and records `identity` (the caller has checked it)."""
        os.makedirs(self.workdir, exist_ok=True)
        if self.identity() is None:
            fileio.atomic_write_json(
                os.path.join(self.workdir, IDENTITY_FILE),
                {"identity": identity, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
            )

    def path(self, batch, key):
        return os.path.join(self.workdir, f"b{batch:05d}-{key}.npz")

    def load(self, batch, key):
        """The unit `(batch, key)` as a dict, or `None` if it was not written."""
        path = self.path(batch, key)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            unit = _from_npz(f.read())
        self.restored += 1
        return unit

    def save(self, batch, key, unit):
        """Writes the unit `(batch, key)` atomically."""
        data = _to_npz(unit)
        fileio.atomic_write(self.path(batch, key), lambda f: f.write(data), binary=True)


def pack(units):
    """`{(batch, key): unit}` as bytes (`np.savez`), for a collective to carry."""
    arrays = {}
    for (batch, key), unit in units.items():
        for name, value in _flat(unit).items():
            arrays[f"{batch}/{key}/{name}"] = value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data):
    """The inverse of `pack`."""
    grouped = {}
    with np.load(io.BytesIO(data)) as npz:
        for name in npz.files:
            batch, key, field = name.split("/")
            grouped.setdefault((int(batch), key), {})[field] = npz[name]
    return {k: _unflat(v) for k, v in grouped.items()}


def _flat(unit):
    out = {}
    for name, value in unit.items():
        if name in _ARRAYS:
            out[name] = np.asarray(value)
        else:  # Scalars, strings, lists: JSON.
            out[name] = np.array(json.dumps(value))
    return out


def _unflat(arrays):
    return {
        name: (value if name in _ARRAYS else json.loads(str(value)))
        for name, value in arrays.items()
    }


def _to_npz(unit):
    buf = io.BytesIO()
    np.savez(buf, **_flat(unit))
    return buf.getvalue()


def _from_npz(data):
    with np.load(io.BytesIO(data)) as npz:
        return _unflat({name: npz[name] for name in npz.files})


__all__ = ["IDENTITY_FILE", "ResultStore", "pack", "unit_key", "unpack"]
