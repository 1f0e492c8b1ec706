"""benchmarks/checkpoint_robustness.py, run as users run it, on a real (tiny) training run.

A two-epoch run of the train command's library (`experiment.run`, 256 images, with weight
averaging, so the checkpoints hold the average beside the weights) leaves two checkpoints;
the benchmark judges both with FGSM on 16 test images. Asserted: the last checkpoint's
model is the run's own `model.keras` (same weights), the first is not; the JSON's rows carry
the run's validation figures of their epoch; `--markdown_from` reprints
the table; a checkpoint the run does not have is a one-line error with nothing written.
No figure of the models is asserted.
"""

import functools
import json
import os

import numpy as np
import pytest

from at2l_tf import config as config_lib

SCRIPT = os.path.join("benchmarks", "checkpoint_robustness.py")


@pytest.fixture
def run(repo_python):
    """The benchmark with these arguments, as a user runs it (conftest's `repo_python`)."""
    return functools.partial(repo_python, SCRIPT)


def _train(run_dir):
    from at2l_tf import experiment

    experiment.run(config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=64),
        attack=config_lib.AttackConfig(name="fgsm"),
        train=config_lib.TrainConfig(objective="at", epochs=2, ema=0.9, mixed_precision="off"),
        eval=config_lib.EvalConfig(num_examples=16, attacks=("fgsm",)),
        workdir=str(run_dir), export_dir=None,
    ), verbose=0)


def test_each_checkpoint_is_judged_and_the_last_is_the_runs_model(tmp_path, run):
    import keras

    run_dir, out = tmp_path / "run", tmp_path / "curve.json"
    _train(run_dir)
    proc = run(f"--run_dir={run_dir}", "--epochs=2,1", "--num_examples=16", "--batch_size=16",
                "--attacks=fgsm", f"--output_json={out}", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    history = json.loads((run_dir / "results.json").read_text())["history"]
    assert [r["epoch"] for r in record["rows"]] == [1, 2]
    for r in record["rows"]:
        assert r["val_adv_acc"] == history["val_adv_acc"][r["epoch"] - 1]
        assert set(r["attacks"]) == {"fgsm"}
        assert r["robust_accuracy"] <= min(r["clean_accuracy"], r["attacks"]["fgsm"])
    final = keras.models.load_model(run_dir / "model.keras").get_weights()
    models = {e: keras.models.load_model(run_dir / "checkpoint_models" / f"epoch-{e:02d}.keras").get_weights()
              for e in (1, 2)}
    assert all(np.array_equal(a, b) for a, b in zip(models[2], final))  # The average, as exported.
    assert not all(np.array_equal(a, b) for a, b in zip(models[1], final))

    table = run(f"--markdown_from={out}")
    assert table.returncode == 0, table.stderr[-2000:]
    assert table.stdout.strip() and table.stdout.strip() in proc.stdout

    bad = run(f"--run_dir={run_dir}", "--epochs=3", f"--output_json={tmp_path / 'bad.json'}")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("checkpoint_robustness:")]
    assert bad.returncode == 1 and errors == [
        "checkpoint_robustness: error: no checkpoint for epoch 3 (the run has epochs 1..2)"], bad.stderr[-2000:]
    assert not (tmp_path / "bad.json").exists()
