"""The recipe ablation (benchmarks/studies/recipe_ablation.py, run by benchmarks/study.py): a smoke
run (two variants, one seed, a tiny budget) that trains, judges, pairs and resumes; and its bad
input (one line, exit 1, nothing written)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's package, whatever `pip install -e` points at.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)


def _ablation(*args):
    return subprocess.run([sys.executable, os.path.join("benchmarks", "study.py"), "--study=recipe_ablation", *args],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900)


def test_smoke_run_trains_judges_pairs_and_resumes(tmp_path):
    out = tmp_path / "ablation.json"
    args = ("--variants=trades,ema", "--seeds=0", "--epochs=1", "--max_train_examples=256", "--test_examples=8",
            "--mixed_precision=off", "--bootstrap_replicates=50", f"--output_json={out}",
            f"--study_dir={tmp_path / 'runs'}")
    proc = _ablation(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(out.read_text())
    assert state["study"] == "recipe_ablation" and state["complete"] is True
    assert set(state["runs"]) == {"trades/s0", "ema/s0"}
    assert state["runs"]["ema/s0"]["train_flags"] == ["--ema=0.995"]
    assert {"--epochs=1", "--max_train_examples=256", "--mixed_precision=off"} <= set(state["settings"]["recipe"])
    for run in state["runs"].values():
        assert run["fast"]["num_examples"] == 8 and run["policy"] == "float32"
    pair = state["report"]["pairs"]["ema − trades"]["bootstrap"]
    assert pair["seeds"] == [0] and pair["num_examples"] == 8
    assert "| + weight averaging 0.995 | 1 |" in proc.stdout
    # The JSON is the state: the same command again trains nothing.
    again = _ablation(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run trades/s0" not in again.stderr and "run ema/s0" not in again.stderr
    assert set(json.loads(out.read_text())["runs"]) == {"trades/s0", "ema/s0"}


@pytest.mark.parametrize("arg, message", [
    ("--variants=nope", "unknown variant 'nope'; known: trades, ema, eps_warmup, awp, wide_silu, all"),
    ("--variants=ema", "the variants must include the reference 'trades' of 'ema'"),
    ("--seeds=a", "seeds must be non-negative integers, received 'a'"),
    ("--epochs=0", "epochs must be >= 1, received epochs=0"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, arg, message):
    out = tmp_path / "ablation.json"
    proc = _ablation(arg, f"--output_json={out}")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not out.exists()
