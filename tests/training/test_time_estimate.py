"""`TimeEstimate`: the run's time per step, per epoch and in all, printed once after its first steps."""

import io
import re
import time

import keras
import numpy as np
import pytest

from at2l_tf.training.time_estimate import TimeEstimate, duration


class _Sleep(keras.callbacks.Callback):
    """Makes every step last at least `seconds` (a known step time to estimate)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def _fit(callbacks, epochs=2, steps=8, start=0):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((steps * 4, 3), np.float32), np.zeros(steps * 4, np.int64)
    for e in range(start, start + epochs):  # One fit call per epoch, as the train command.
        model.fit(x, y, batch_size=4, initial_epoch=e, epochs=e + 1, callbacks=callbacks, verbose=0)


def test_the_estimate_is_printed_once_after_the_first_steps_and_is_about_right():
    out = io.StringIO()
    estimate = TimeEstimate(steps_per_epoch=8, epochs=2, min_steps=4, stream=out)
    _fit([_Sleep(0.05), estimate])
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines  # Once per run, not per fit call.
    match = re.fullmatch(
        r"\[at2l_tf\] epoch 1: ~([0-9.]+) s/step, ~(.+) per epoch, ~(.+) for 2 epochs "
        r"\(8 steps each; training steps only\)",
        lines[0],
    )
    assert match, lines[0]
    # Each step sleeps 0.05 s; the first (tracing) step is left out of the clock.
    assert 0.05 <= float(match.group(1)) < 0.5
    assert estimate.seconds_per_step == pytest.approx(float(match.group(1)), rel=0.01)


def test_a_short_epoch_reports_at_its_end_and_a_resumed_run_names_its_epoch():
    out = io.StringIO()
    _fit([TimeEstimate(steps_per_epoch=3, epochs=1, first_epoch=4, min_steps=20, stream=out)],
         epochs=1, steps=3, start=4)  # Resumed: the 5th and last epoch is left.
    assert re.match(r"\[at2l_tf\] epoch 5: ~.+ for 1 epoch \(3 steps each", out.getvalue())


def test_duration_picks_a_readable_unit():
    assert [duration(s) for s in (1.234, 45, 150, 1500, 9000, 90000)] == [
        "1.2 s", "45 s", "2.5 min", "25 min", "2.5 h", "25 h"]
