"""The run's time estimate, printed once after its first steps."""

import sys
import time

import keras


class TimeEstimate(keras.callbacks.Callback):
    """Prints `[at2l_tf] epoch 1: ~X s/step, ~Y min per epoch, ~Z min for N epochs` once.

    The first step of a run traces and compiles the training function, so the
    clock starts at its end; the line is printed once `min_steps` more steps
    have run or `min_seconds` have passed (after at least one timed step),
    or at the end of the first epoch if it is shorter. The estimate covers the
    training steps only: validation, backups and the final check come on top.
    Given to every `fit` call of a run (one per epoch), it prints once per run.

    Args:
        steps_per_epoch: training steps of one epoch.
        epochs: epochs left to train in this run (N in the line).
        first_epoch: 0-based index of the first epoch trained (resumed runs).
        min_steps: timed steps before the estimate (default 20).
        min_seconds: or seconds since the first step ended (default 30).
        stream: where the line goes (default stderr).
    """

    def __init__(self, steps_per_epoch, epochs, first_epoch=0, min_steps=20, min_seconds=30.0,
                 stream=None):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.first_epoch = int(first_epoch)
        self.min_steps = int(min_steps)
        self.min_seconds = float(min_seconds)
        self.stream = stream
        self.seconds_per_step = None  # Set when the line is printed.
        self._epoch = first_epoch
        self._start = None
        self._timed = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds_per_step is not None:
            return
        if self._start is None:  # The end of the first (tracing) step starts the clock.
            self._start = time.perf_counter()
            return
        self._timed += 1
        if self._timed >= self.min_steps or time.perf_counter() - self._start >= self.min_seconds:
            self._report()

    def on_epoch_end(self, epoch, logs=None):
        if self.seconds_per_step is None and self._timed:
            self._report()

    def _report(self):
        self.seconds_per_step = (time.perf_counter() - self._start) / self._timed
        per_epoch = self.seconds_per_step * self.steps_per_epoch
        print(
            f"[at2l_tf] epoch {self._epoch + 1}: ~{self.seconds_per_step:.3g} s/step, "
            f"~{duration(per_epoch)} per epoch, ~{duration(per_epoch * self.epochs)} for "
            f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} "
            f"({self.steps_per_epoch} steps each; training steps only)",
            file=self.stream or sys.stderr,
            flush=True,
        )


def duration(seconds):
    """`12 s`, `7.5 min`, `3.2 h`: seconds under 2 minutes, minutes under 2 hours, else hours."""
    if seconds < 120:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.2g} h" if seconds < 36000 else f"{seconds / 3600:.0f} h"
