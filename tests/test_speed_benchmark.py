"""benchmarks/speed.py --quick, run as users run it: valid JSON with the documented keys;
its families (speed_training.py, speed_attacks.py) run alone on their own figures.

Only that the benchmark runs and what it writes are checked here: every figure a
positive number (or `null` with the documented `skipped` note), every
contender's adversarials valid. No speed ratio is asserted, not even with loose
bounds: on shared machines a ratio moves with the load (`pgd_efficiency`
0.97-0.98 and `at2l_over_at` 0.93-1.03 unmutated here, more elsewhere), so a
test on it fails by chance on one machine and catches little on another. The
ratios and their targets are the benchmark's results (`benchmarks/README.md`,
`benchmarks/results/`), each with its `pass` in the JSON. Without ART or
Foolbox (CI installs only `.[test]`), their ratios must be `null` with the
documented `skipped` note.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ART_NOTE = "adversarial-robustness-toolbox not installed (pip install -e '.[bench]')"
FOOLBOX_NOTE = "foolbox not installed (pip install -e '.[bench]')"
TARGETS = (
    "at2l_over_at", "pgd_efficiency", "pgd_vs_art", "fgsm_vs_art", "pgd_vs_cleverhans_eager",
    "apgd_vs_art", "pgd_vs_foolbox",
)
FIGURES = TARGETS + ("train_epoch_s", "train_run", "recipe_step_s")
ART_RATIOS = ("pgd_vs_art", "fgsm_vs_art", "apgd_vs_art")
FOOLBOX_RATIOS = ("pgd_vs_foolbox",)
DEFENSES = ("none", "at", "at2l")
# Ratios timed side by side that the JSON carries besides the targets (no bounds: see above).
CPU_RATIOS = ("pgd_efficiency_cpu",)
HAS_ART = importlib.util.find_spec("art") is not None
HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _skipped(name):
    """The note a figure gets instead of a value, or None when its peer is installed."""
    if name in ART_RATIOS and not HAS_ART:
        return ART_NOTE
    if name in FOOLBOX_RATIOS and not HAS_FOOLBOX:
        return FOOLBOX_NOTE
    return None


TRAINING_FIGURES = ("at2l_over_at", "train_epoch_s", "train_run", "recipe_step_s")


def _speed(*args, script="speed.py"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join("benchmarks", script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _check_valid(record, contenders):
    """Each contender's adversarials are checked, inside the eps ball and [0, 1]."""
    for name in contenders:
        check = record["validity"][name]
        assert check["in_eps_ball"] and check["in_box"], (name, check)
        assert check["max_linf"] <= 0.3 + 1e-6 and 0 <= check["error_adv"] <= 1, (name, check)
        assert _positive(record["images_per_s"][name]), name


def test_quick_speed_benchmark_writes_the_documented_json(tmp_path):
    out = tmp_path / "speed.json"
    proc = _speed("--quick", f"--output_json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in TARGETS:  # The table names every figure.
        assert name in proc.stdout

    result = json.loads(out.read_text())
    assert result["benchmark"] == "speed" and result["quick"] is True
    assert "--quick" in result["command"] and result["date"]
    machine = result["machine"]
    assert machine["platform"] and machine["cpu_count"] >= 1 and "cpu_model" in machine
    versions = result["versions"]
    assert versions["tensorflow"] and versions["keras"] and versions["cleverhans"]
    assert (versions["adversarial-robustness-toolbox"] is not None) == HAS_ART
    assert (versions["foolbox"] is not None) == HAS_FOOLBOX
    assert (versions["eagerpy"] is not None) == HAS_FOOLBOX
    settings = result["settings"]
    assert settings["batch_size"] == 128 and settings["repeats"] >= 1
    assert settings["figures"] == list(FIGURES)
    assert settings["apgd_steps"] == 10 and settings["attack_apgd"]["restarts"] == 1
    assert _positive(result["peak_rss_mb"])
    assert result["load"]["load_avg_start"] and result["load"]["load_avg_end"]

    assert list(result["models"]) == ["mnist_small"]
    for record in result["models"].values():
        for name in TARGETS:
            if _skipped(name):
                assert record[name] is None
            else:
                assert _positive(record[name]), (name, record[name])
        for name in CPU_RATIOS:
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
        _check_valid(record, ["ours_pgd", "cleverhans_eager_pgd"])
        if HAS_ART:  # Every ART attack, APGD included, made valid adversarials.
            # Our FGSM is timed only against ART's (`fgsm_vs_art`).
            _check_valid(record, ["ours_fgsm", "art_fgsm", "art_pgd", "ours_apgd", "art_apgd"])
            assert _positive(record["apgd_vs_art_cpu"])
            # The model's predictions as labels: all 128 images attacked, by both.
            assert record["apgd_labels"]["attacked"] == 128
            assert _positive(record["sections"]["attacks_apgd"]["wall_s"])
        if HAS_FOOLBOX:
            _check_valid(record, ["foolbox_pgd"])
            assert _positive(record["pgd_vs_foolbox_cpu"])

    targets = result["targets"]
    assert set(targets) == set(TARGETS)
    for name, entry in targets.items():
        assert entry["target"] and set(entry["values"]) == {"mnist_small"}
        if _skipped(name):
            assert entry["pass"] is None and entry["skipped"] == _skipped(name)
        else:
            assert isinstance(entry["pass"], bool)
    notes = [n for n, has in ((ART_NOTE, HAS_ART), (FOOLBOX_NOTE, HAS_FOOLBOX)) if not has]
    assert result.get("skipped") == ("; ".join(notes) or None)


def test_figures_runs_only_the_figures_named(tmp_path):
    # The attacks family alone, as speed_attacks.py.
    out = tmp_path / "speed.json"
    proc = _speed("--quick", "--figures=pgd_vs_foolbox", f"--output_json={out}",
                  script="speed_attacks.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "speed_attacks" and "speed_attacks.py" in result["command"]
    assert result["settings"]["figures"] == ["pgd_vs_foolbox"]
    assert "train_pgd_steps" not in result["settings"]  # The training family did not run.
    assert set(result["targets"]) == {"pgd_vs_foolbox"}
    (record,) = result["models"].values()
    for other in set(FIGURES) - {"pgd_vs_foolbox"}:
        assert other not in record, other
    if HAS_FOOLBOX:
        # Ours and Foolbox's PGD only, timed side by side.
        assert set(record["images_per_s"]) == {"ours_pgd", "foolbox_pgd"}
        assert _positive(record["pgd_vs_foolbox"])
        _check_valid(record, ["ours_pgd", "foolbox_pgd"])
    else:
        assert record["pgd_vs_foolbox"] is None and result["skipped"] == FOOLBOX_NOTE


def test_an_unknown_figure_is_a_one_line_error(tmp_path):
    out = tmp_path / "speed.json"
    proc = _speed("--quick", "--figures=apgd_vs_art,no_such_figure", f"--output_json={out}")
    assert proc.returncode == 1
    errors = [l for l in proc.stderr.splitlines() if l.startswith("speed: error:")]
    assert errors == [
        "speed: error: unknown figure 'no_such_figure'; known figures: " + ", ".join(FIGURES)
    ]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_family_knows_only_its_own_figures(tmp_path):
    out = tmp_path / "speed.json"
    proc = _speed("--quick", "--figures=apgd_vs_art", f"--output_json={out}",
                  script="speed_training.py")
    assert proc.returncode == 1
    errors = [l for l in proc.stderr.splitlines() if l.startswith("speed_training: error:")]
    assert errors == [
        "speed_training: error: unknown figure 'apgd_vs_art'; known figures: "
        + ", ".join(TRAINING_FIGURES)
    ]
    assert not out.exists()


def test_recipe_steps_time_trades_with_each_training_ingredient(tmp_path):
    out = tmp_path / "speed.json"
    proc = _speed("--quick", "--figures=recipe_step_s", f"--output_json={out}", script="speed_training.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["figures"] == ["recipe_step_s"]
    assert "precision bfloat16" in result["settings"]["recipe"]
    (record,) = result["models"].values()
    recipe = record["recipe_step_s"]
    assert recipe["params"] == 225_034 and recipe["precision"] == "mixed_bfloat16"  # mnist_small
    assert set(recipe["steps_s"]) == {"plain", "ema", "awp", "ema_awp"}
    assert all(_positive(v) for v in recipe["steps_s"].values())
    # No bounds on the ratios: on this shared 2-core machine under load (0.6-0.7 cores per
    # process) the medians of 9 rounds put AWP at 0.65-1.12x and EMA at 0.61-0.68x the
    # plain step, noise larger than the extra pass AWP costs.
    assert _positive(recipe["awp_over_plain"]) and _positive(recipe["ema_over_plain"])
    for other in set(TRAINING_FIGURES) - {"recipe_step_s"}:
        assert other not in record, other
