"""benchmarks/recipe_ablation.py: a smoke run (two variants, one seed, a tiny budget) that
trains, judges, pairs and resumes; and its bad input (one line, exit 1, nothing written)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's package, whatever `pip install -e` points at.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)


def _ablation(*args):
    return subprocess.run([sys.executable, os.path.join("benchmarks", "recipe_ablation.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900)


def test_smoke_run_trains_judges_pairs_and_resumes(tmp_path):
    out = tmp_path / "ablation.json"
    args = ("--variants=ema", "--seeds=0", "--epochs=1", "--max_train_examples=256", "--test_examples=8",
            "--precision=off", "--bootstrap_replicates=50", f"--output_json={out}",
            f"--study_dir={tmp_path / 'runs'}")
    proc = _ablation(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(out.read_text())
    assert state["benchmark"] == "recipe_ablation" and state["complete"] is True
    assert set(state["runs"]) == {"trades/s0", "ema/s0"}  # The base always runs.
    assert state["runs"]["ema/s0"]["train_flags"] == ["--ema=0.995", "--epochs=1", "--max_train_examples=256"]
    for run in state["runs"].values():
        assert run["fast"]["num_examples"] == 8 and run["precision"] == "float32"
    (ema,) = [r for r in state["report"] if r["variant"] == "ema"]
    assert ema["vs_base"]["seeds"] == [0] and ema["vs_base"]["num_examples"] == 8
    assert "| + weight averaging 0.995 | 1 |" in proc.stdout
    # The JSON is the state: the same command again trains nothing.
    again = _ablation(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run trades/s0" not in again.stderr and "run ema/s0" not in again.stderr
    assert set(json.loads(out.read_text())["runs"]) == {"trades/s0", "ema/s0"}


@pytest.mark.parametrize("arg, message", [
    ("--variants=nope", "unknown variant 'nope'; known: trades, ema, eps_warmup, awp, wide_silu, all"),
    ("--seeds=a", "seeds must be non-negative integers, received 'a'"),
    ("--epochs=0", "epochs must be >= 1, received epochs=0"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, arg, message):
    out = tmp_path / "ablation.json"
    proc = _ablation(arg, f"--output_json={out}")
    assert proc.returncode == 1
    assert [l for l in proc.stderr.splitlines() if l.startswith("recipe_ablation: error:")] == [
        f"recipe_ablation: error: {message}"]
    assert not out.exists()
