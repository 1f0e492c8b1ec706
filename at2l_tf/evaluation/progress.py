"""Progress of a robustness report, on stderr: a Keras progress bar on a terminal,
one line per batch and attack stage elsewhere (a log file, a batch job).

A line says what finished, how many examples the evaluation has reached, how
many of them are still robust (classified correctly under every L-inf attack
run on them so far), the time since the evaluation started in this process,
and an estimate of the time left:

    [at2l_tf] batch 3/8 pgd: 384/1000 examples, 341 still robust, 12.3 s elapsed, ETA 21 s
    [at2l_tf] batch 3/8 autoattack/apgd_t: 98 of 128 still robust, 40.1 s elapsed, ETA 2.5 min

Stage lines (AutoAttack's APGD-CE, APGD-T, Square) count what the composite
attack left robust in that batch. The estimate is the seconds per example of
each attack so far (units restored from a work directory count with the time
they took) times the examples each attack has left; it is unknown (`?`) until
every attack has run once.
"""

import contextlib
import sys
import time

import keras

MODES = ("bar", "lines")


def choose_mode(verbose, stream=None):
    """`None` (silent) for verbose 0, `"lines"` for 2 or off a terminal, else `"bar"`."""
    stream = stream or sys.stderr
    if not verbose:
        return None
    if verbose == 1 and stream.isatty():
        return "bar"
    return "lines"


class Progress:
    """Reports the units of a robustness report as they finish.

    Args:
        mode: `"bar"`, `"lines"` or `None` (silent).
        total: examples in the evaluation.
        num_batches: batches in the evaluation.
        planned: `{label: examples this process will attack}`.
        units: units (batch and attack pairs) this process will run, the bar's length.
        prefix: put before every line (a worker's name).
        stream: where to write (default stderr).
    """

    def __init__(self, mode, *, total, num_batches, planned, units, prefix="", stream=None):
        self.mode = mode
        self.total, self.num_batches = total, num_batches
        self.planned = dict(planned)
        self.done = dict.fromkeys(planned, 0)
        self.seconds = dict.fromkeys(planned, 0.0)
        self.measured = dict.fromkeys(planned, 0)
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.units = 0
        self._bar = None
        if mode == "bar":
            with self._to_stream():
                self._bar = keras.utils.Progbar(
                    units or None, stateful_metrics=["examples", "robust"], unit_name="unit"
                )

    @contextlib.contextmanager
    def _to_stream(self):
        # Keras' Progbar writes to stdout; stdout carries only results here.
        with contextlib.redirect_stdout(self.stream):
            yield

    def count(self, label, examples, seconds):
        """Counts a unit of `label` on `examples` examples that took `seconds`
        (also for units restored from a work directory)."""
        self.done[label] += examples
        if seconds is not None:
            self.seconds[label] += seconds
            self.measured[label] += examples

    def eta(self):
        """Seconds left by the rates so far, or `None` while an attack has no rate."""
        left = 0.0
        for label, planned in self.planned.items():
            remaining = planned - self.done[label]
            if remaining <= 0:
                continue
            if not self.measured[label]:
                return None
            left += remaining * self.seconds[label] / self.measured[label]
        return left

    def skip(self, units):
        """Counts `units` restored from a work directory as done (the bar starts there)."""
        self.units += units

    def unit(self, batch, label, *, reached, robust):
        """Reports that `label` finished on `batch` (0-based); `reached` examples
        of the evaluation are in the batches started, `robust` of them still robust."""
        self.units += 1
        if self.mode == "lines":
            self._line(
                f"batch {batch + 1}/{self.num_batches} {label}: {reached}/{self.total} examples, "
                f"{robust} still robust"
            )
        elif self.mode == "bar":
            with self._to_stream():
                self._bar.update(self.units, [("examples", reached), ("robust", robust)])

    def stage(self, batch, label, stage, *, attacked, robust):
        """Reports a stage of a composite attack on `batch` (lines mode only)."""
        if self.mode == "lines":
            self._line(
                f"batch {batch + 1}/{self.num_batches} {label}/{stage}: {robust} of {attacked} "
                "attacked still robust"
            )

    def message(self, text):
        """A line of its own (not in silent mode)."""
        if self.mode:
            with self._to_stream():
                print(f"[at2l_tf] {self.prefix}{text}", flush=True)

    def close(self):
        if self.mode == "bar" and self._bar is not None and self._bar.target is None:
            print(file=self.stream)  # Progbar leaves the line open when it has no target.

    def _line(self, what):
        eta = self.eta()
        print(
            f"[at2l_tf] {self.prefix}{what}, {_duration(time.perf_counter() - self.started)} "
            f"elapsed, ETA {'?' if eta is None else _duration(eta)}",
            file=self.stream,
            flush=True,
        )


def _duration(seconds):
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["MODES", "Progress", "choose_mode"]
