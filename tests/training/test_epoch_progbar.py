"""The per-epoch log line counts the run's epochs: `Epoch k/N`, N the run's total."""

import os
import re
import subprocess
import sys

import keras
import numpy as np

from at2l_tf.training.epoch_progbar import EpochProgbarLogger

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)


def _headers(text):
    return re.findall(r"^Epoch \d+/\d+$", text, flags=re.MULTILINE)


def test_a_two_epoch_run_not_on_a_terminal_prints_epoch_1_of_2_and_2_of_2(tmp_path):
    # The train command with its output piped (not a terminal: one line per epoch).
    run = subprocess.run(
        [sys.executable, "-m", "at2l_tf.train", "--objective=none", "--epochs=2",
         "--max_train_examples=256", "--batch_size=64", "--validation_size=64",
         "--eval_examples=16", "--eval_attacks=fgsm", f"--workdir={tmp_path / 'run'}",
         "--export_dir="],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert _headers(run.stdout) == ["Epoch 1/2", "Epoch 2/2"], run.stdout[-2000:]


def test_one_fit_call_per_epoch_counts_the_whole_run_resumed_ones_too(capsys):
    # As experiment._fit_epochs trains: fit(initial_epoch=e, epochs=e + 1), here
    # resumed after the first of 3 epochs.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((8, 4), "float32"), np.zeros((8,), "int64")
    for e in (1, 2):
        model.fit(x, y, initial_epoch=e, epochs=e + 1, verbose=2,
                  callbacks=[EpochProgbarLogger(3)])
    assert _headers(capsys.readouterr().out) == ["Epoch 2/3", "Epoch 3/3"]
    # Keras' own logger is replaced, not doubled; silent stays silent.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[EpochProgbarLogger(3)])
    assert capsys.readouterr().out == ""
