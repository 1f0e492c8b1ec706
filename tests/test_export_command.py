"""The export command, run as users run it."""

import os
import subprocess
import sys

import numpy as np

from at2l_tf import models, savedmodel


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "at2l_tf.export", *args], capture_output=True, text=True, env=env
    )


def test_export_command_writes_a_version_and_refuses_bad_input(tmp_path):
    model_path = str(tmp_path / "model.keras")
    models.get_model("mnist_small").save(model_path)
    root = tmp_path / "serving"
    ok = _run(f"--model_path={model_path}", f"--export_dir={root}", "--dataset=mnist", "--version=3",
              "--serving_input_check=off")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().endswith(os.path.join("serving", "3"))
    loaded = savedmodel.load_classifier(str(root))
    assert loaded.metadata["dataset"] == "mnist" and loaded.input_shape == (28, 28, 1)
    # For clients that clip upstream: no domain check, values outside [0, 1] are answered.
    assert loaded.metadata["serving_input_check"] is False
    assert loaded.model_fn(np.full((1, 28, 28, 1), 1.5, np.float32)).shape == (1, 10)

    missing = _run(f"--model_path={tmp_path / 'nope.keras'}", f"--export_dir={root}")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"export: error: model file does not exist: {tmp_path / 'nope.keras'}"
    )
    assert sorted(os.listdir(root)) == ["3"]
