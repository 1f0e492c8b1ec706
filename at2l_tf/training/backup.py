"""Resume rules in one place: whose workdir it is, what a backup holds, where a run resumes.

A training run backs itself up to `<workdir>/backup/<task>-<index>/state.npz`
(one directory per worker: `worker-0` for a single process) at the end of
every epoch and, with `save_every_steps=N`, every N steps. One backup is one
file, written to a temporary name and renamed, so a kill at any moment leaves
either the previous backup or the new one, never half of one. It holds:

* the classifier's weights and the optimizer's state (Adam moments, step
  count, hence the learning-rate schedule's position and AWP's start), and
  the weights' moving average when `--ema` is on (`training.weight_average`);
* the position: epochs finished and steps done in the next epoch (epochs are
  counted over the whole run, clean pre-training first);
* the history of the epochs finished, and the list of earlier resumes;
* the training identity of the configuration (`identity`).

Rules, applied by `open_workdir` before any data is read:

1. A workdir whose backup or `results.json` records another training
   configuration is refused (`at2l_tf.identity`: one line listing every
   difference): runs are never mixed, and nothing of the earlier run is
   touched. Settings that do not change the weights (`IGNORED`: workdir, export, the final test check,
   backup frequency) may differ.
2. A backup of the same configuration is resumed from: the weights, the
   optimizer state, the epoch and the step. The data order of every epoch is a
   function of (seed, epoch) only, so a resumed epoch skips exactly the batches
   already trained on. What is not restored: the random state of the training
   attack's random start and of the triplet negatives' tie-breaking, so a
   resumed run matches an uninterrupted one within noise, not bit for bit.
   Ensemble training (Algorithm 2) resumes at epoch boundaries only: its
   adversarial sets were crafted against the weights at the start of the epoch,
   so a mid-epoch backup cannot be continued honestly; the interrupted epoch is
   replayed from its start (the sets are crafted again against the restored
   weights).
3. A workdir whose `results.json` records the same configuration and has no
   backup holds a finished run: it is trained again from scratch (as before).
4. A backup is removed once the run's results are written.
"""

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time

import keras
import numpy as np

from at2l_tf import fileio
from at2l_tf import identity as run_identity
from at2l_tf.errors import ConfigError, Interrupted

# Settings that may change between a run and its resume: they do not change the weights.
# The precision is compared as resolved (`Backup.check_precision`), not as asked
# (`auto` may resolve to another policy on another machine).
IGNORED = ("workdir", "export_dir", "serving_input_check", "eval", "train.save_every_steps",
           "train.mixed_precision")
STATE_FILE = "state.npz"


def identity(config_dict, defaults=None):
    """The settings of a configuration dict that decide the weights, flattened to dotted keys.

    Keys missing from `config_dict` (settings added after it was recorded)
    take their value from `defaults`.
    """
    flat = run_identity.flatten(config_dict, defaults)
    return {k: v for k, v in flat.items() if not any(k == i or k.startswith(i + ".") for i in IGNORED)}


def backup_dir(workdir, worker):
    return os.path.join(workdir, "backup", worker.name)


def check_writable(directory):
    """Raises a one-line `ConfigError` unless `directory` can be created and written.

    Writes nothing that stays: a temporary file in the nearest existing
    ancestor, removed at once (the run creates its directories when it writes).
    """
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path} is not a directory")
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to workdir {directory}: {e.strerror or e}") from None


def open_workdir(workdir, worker, current_identity, defaults=None):
    """Applies the resume rules to `workdir`; returns the `Backup` of this worker.

    Raises:
        ConfigError: the workdir holds a run of another configuration, or
            cannot be written. Nothing in it is changed then.
    """
    results = os.path.join(workdir, "results.json")
    backup = Backup(backup_dir(workdir, worker))
    recorded, where = None, None
    state = backup.load_meta()
    if state is not None:
        recorded, where = state["identity"], f"an unfinished run (backup {backup.path})"
    elif os.path.exists(results):
        try:
            with open(results) as f:
                recorded = identity(json.load(f).get("config", {}), defaults)
        except (OSError, ValueError):
            recorded = None  # Unreadable results: nothing to compare; they are rewritten at the end.
        where = f"a finished run ({results})"
    if recorded is not None:
        run_identity.require_same(recorded, current_identity, where=f"workdir {workdir}", what=where)
    check_writable(workdir)
    check_writable(backup.directory)
    backup.identity = current_identity
    return backup


class Backup:
    """One worker's backup file: weights, optimizer state, position and history.

    Attributes:
        epoch, step: the position of the loaded or last written backup.
        meta: its JSON-able part (`epoch`, `step`, `phase`, `history`,
            `pretrain_history`, `resumes`, `identity`, `precision`, `cpu_model`,
            `train_seconds`).
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.identity = None
        self.meta = None
        self._arrays = None
        self.precision = "float32"  # The Keras policy the run trains under (written with the state).
        self.cpu_model = None  # This sitting's CPU (written with the state).

    def load_meta(self):
        """Reads the backup, if any; returns its metadata (or None)."""
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path) as npz:
                self.meta = json.loads(str(npz["meta"]))
                self._arrays = {k: npz[k] for k in npz.files if k != "meta"}
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"backup {self.path} cannot be read ({e}); delete it to start again") from None
        return self.meta

    @property
    def position(self):
        """`(epochs finished, steps done in the next epoch)`; (0, 0) without a backup."""
        if not self.meta:
            return 0, 0
        return self.meta["epoch"], self.meta["step"]

    def check_precision(self, policy, cpu_model=None):
        """Records `policy` (a Keras policy name) and `cpu_model` (this sitting's CPU)
        for the backups to come, and refuses a loaded backup written under another
        policy (`ConfigError`, one line). Another CPU is allowed: each resume records
        the CPU of the sitting before it and its own.

        Weights trained in bfloat16 and resumed in float32 (or the reverse) would
        make a run of two precisions that no flag describes.
        """
        if self.meta is not None:
            recorded = self.meta.get("precision", "float32")  # Backups before mixed precision.
            if recorded != policy:
                raise ConfigError(
                    f"backup {self.path} was written under precision {recorded}, this run trains "
                    f"under {policy}; rerun with the --mixed_precision of that run, or delete it"
                )
        self.precision = policy
        self.cpu_model = cpu_model

    def restore(self, model, phase, strategy):
        """Loads the backup into the `AT2LModel` `model` of `phase` (`pretrain` or `train`).

        The classifier's weights always; the optimizer's state only if the
        backup was written in the same phase (pre-training has its own optimizer).
        """
        if not self.meta:
            return
        n = self.meta["num_weights"]
        model.classifier.set_weights([self._arrays[f"w{i}"] for i in range(n)])
        if self.meta["phase"] != phase:
            return
        with strategy.scope():
            if not model.optimizer.built:
                model.optimizer.build(model.classifier.trainable_weights)
        variables = model.optimizer.variables
        # Variable names carry per-process layer counters: compare shapes, in order.
        saved = [tuple(self._arrays[f"o{i}"].shape) for i in range(len(self.meta["optimizer_variables"]))]
        if [tuple(v.shape) for v in variables] != saved:
            raise ConfigError(
                f"backup {self.path} holds another optimizer state ({len(saved)} variables, "
                f"the model has {len(variables)}); delete it to start again"
            )
        for i, v in enumerate(variables):
            v.assign(self._arrays[f"o{i}"])
        average = getattr(model, "weight_average", None)
        if average is not None:
            m = self.meta.get("num_averages", 0)
            if m != len(average.averages):
                raise ConfigError(
                    f"backup {self.path} holds {m} weight averages, the model has "
                    f"{len(average.averages)}; delete it to start again"
                )
            average.set_values([self._arrays[f"a{i}"] for i in range(m)])

    def save(self, model, *, epoch, step, phase, history, pretrain_history, resumes, train_seconds=0.0):
        """Writes the state of `model` at (`epoch`, `step`) atomically.

        `train_seconds`: the run's time so far, this sitting's and the earlier
        ones', so a run trained in sittings reports its whole training time.
        """
        weights = model.classifier.get_weights()
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        optimizer_vars = model.optimizer.variables if model.optimizer.built else []
        arrays.update({f"o{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(optimizer_vars)})
        average = getattr(model, "weight_average", None)
        averages = average.get_values() if average is not None else []
        arrays.update({f"a{i}": a for i, a in enumerate(averages)})
        self.meta = {
            "epoch": epoch,
            "step": step,
            "phase": phase,
            "num_weights": len(weights),
            "optimizer_variables": [v.path for v in optimizer_vars],
            "num_averages": len(averages),
            "history": history,
            "pretrain_history": pretrain_history,
            "resumes": resumes,
            "train_seconds": round(float(train_seconds), 1),
            "identity": self.identity,
            "precision": self.precision,
            "cpu_model": self.cpu_model,  # The CPU of the sitting that wrote it.
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        arrays["meta"] = np.array(json.dumps(self.meta))
        os.makedirs(self.directory, exist_ok=True)
        fileio.atomic_write(self.path, lambda f: np.savez(f, **arrays), binary=True)

    def remove(self):
        """Deletes this worker's backup directory (the run is finished)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        parent = os.path.dirname(self.directory)
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # Only if no other worker's backup is left.


class BackupCallback(keras.callbacks.Callback):
    """Backs up every `save_every_steps` steps (0: never mid-epoch) and at every epoch end.

    Epoch `epoch` starts `first_step` steps in (a resumed epoch); later epochs
    start at step 0. The epoch's logs go to `run["history"]` (or
    `run["pretrain_history"]`) before its backup. After a Ctrl-C
    (`StopFlag.set`) it writes a backup after the current step and stops
    `fit`; with `mid_epoch=False` (ensemble training) it stops without one, and
    the backup of the last finished epoch stands. Each backup records the
    run's training time so far: `run["seconds_before"]` (earlier sittings)
    plus the time since `run["clock"]` (`time.monotonic()` at this sitting's start).
    """

    def __init__(self, backup, run, *, epoch, first_step, phase, save_every_steps, stop_flag, mid_epoch=True):
        super().__init__()
        self.backup, self.run = backup, run
        self.resume_epoch, self.resume_step = epoch, first_step
        self.epoch, self.first_step, self.phase = epoch, first_step, phase
        self.save_every_steps = save_every_steps if mid_epoch else 0
        self.mid_epoch = mid_epoch
        self.stop_flag = stop_flag
        self.stopped_at = None

    def _save(self, epoch, step):
        self.backup.save(
            self.model, epoch=epoch, step=step, phase=self.phase, history=self.run["history"],
            pretrain_history=self.run["pretrain_history"], resumes=self.run["resumes"],
            train_seconds=self.run["seconds_before"] + time.monotonic() - self.run["clock"],
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.first_step = self.resume_step if epoch == self.resume_epoch else 0

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        if self.stop_flag.is_set():
            if self.mid_epoch:
                self._save(self.epoch, step)
            self.stopped_at = (self.epoch, step)
            self.model.stop_training = True
        elif self.save_every_steps and step % self.save_every_steps == 0:
            self._save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_at is not None:
            return  # The epoch did not finish: its logs are not an epoch's.
        key = "pretrain_history" if self.phase == "pretrain" else "history"
        for k, v in (logs or {}).items():
            self.run[key].setdefault(k, []).append(float(np.asarray(v).reshape(-1)[0]))
        self._save(epoch + 1, 0)


class StopFlag:
    """Set by the first Ctrl-C during training (a second one interrupts at once)."""

    def __init__(self):
        self._event = threading.Event()

    def set(self):
        self._event.set()

    def is_set(self):
        return self._event.is_set()

    @contextlib.contextmanager
    def on_sigint(self):
        """Within the block, SIGINT sets the flag instead of raising `KeyboardInterrupt`."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.is_set():
                raise KeyboardInterrupt
            print("\n[at2l_tf] stopping after this step (Ctrl-C again to stop at once)", flush=True)
            self.set()

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


__all__ = [
    "Backup",
    "BackupCallback",
    "IGNORED",
    "Interrupted",
    "StopFlag",
    "backup_dir",
    "check_writable",
    "identity",
    "open_workdir",
]
