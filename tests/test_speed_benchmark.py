"""benchmarks/speed.py --quick, run as users run it: valid JSON with the documented keys.

The targets are not checked here (timings depend on the machine and its load);
only that every figure is there and positive. Without ART (CI installs only
`.[test]`), the ART ratios must be `null` with the documented `skipped` note.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ART_NOTE = "adversarial-robustness-toolbox not installed (pip install -e '.[bench]')"
TARGETS = ("at2l_over_at", "pgd_efficiency", "pgd_vs_art", "fgsm_vs_art", "pgd_vs_cleverhans_eager")
ART_RATIOS = ("pgd_vs_art", "fgsm_vs_art")
DEFENSES = ("none", "at", "at2l")


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_speed_benchmark_writes_the_documented_json(tmp_path):
    out = tmp_path / "speed.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "speed.py"), "--quick", f"--output_json={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in TARGETS:  # The table names every figure.
        assert name in proc.stdout

    result = json.loads(out.read_text())
    has_art = importlib.util.find_spec("art") is not None
    assert result["benchmark"] == "speed" and result["quick"] is True
    assert "--quick" in result["command"] and result["date"]
    machine = result["machine"]
    assert machine["platform"] and machine["cpu_count"] >= 1 and "cpu_model" in machine
    versions = result["versions"]
    assert versions["tensorflow"] and versions["keras"] and versions["cleverhans"]
    assert (versions["adversarial-robustness-toolbox"] is not None) == has_art
    settings = result["settings"]
    assert settings["batch_size"] == 128 and settings["repeats"] >= 1
    assert _positive(result["peak_rss_mb"])
    assert result["load"]["load_avg_start"] and result["load"]["load_avg_end"]

    assert list(result["models"]) == ["mnist_small"]
    for record in result["models"].values():
        for name in TARGETS:
            if name in ART_RATIOS and not has_art:
                assert record[name] is None
            else:
                assert _positive(record[name]), (name, record[name])
        epoch = record["train_epoch_s"]
        assert epoch["extrapolated"] is True and epoch["steps_per_epoch"] == 55000 // 128
        for d in DEFENSES:
            assert _positive(epoch[d]) and _positive(record["train_step_s"][d])
        for name, speed in record["images_per_s"].items():
            assert _positive(speed), name
        run = record["train_run"]  # The train command in a child process.
        assert "-m at2l_tf.train" in run["command"] and "--max_train_examples=512" in run["command"]
        assert _positive(run["wall_s"]) and _positive(run["peak_rss_mb"])
        for name, check in record["validity"].items():
            assert check["in_eps_ball"] and check["in_box"], (name, check)

    targets = result["targets"]
    assert set(targets) == set(TARGETS)
    for name, entry in targets.items():
        assert entry["target"] and set(entry["values"]) == {"mnist_small"}
        if name in ART_RATIOS and not has_art:
            assert entry["pass"] is None and entry["skipped"] == ART_NOTE
        else:
            assert isinstance(entry["pass"], bool)
    if not has_art:
        assert result["skipped"] == ART_NOTE
