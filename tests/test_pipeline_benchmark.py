"""benchmarks/speed.py --family=recipe_cost, run as users run it: valid JSON with the documented keys.

No speed ratio is asserted: timings depend on the machine and its load.
"""

import functools
import json
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def speed(repo_python):
    """`speed.py --family=recipe_cost` with these arguments, run as a user runs it (`repo_python`)."""
    return functools.partial(repo_python, os.path.join("benchmarks", "speed.py"), "--family=recipe_cost")


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_the_documented_json(tmp_path, speed):
    out = tmp_path / "pipeline.json"
    proc = speed("--quick", f"--output_json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== flags/cats_vs_dogs_at2l.flags" in proc.stdout and "s/step" in proc.stdout
    result = json.loads(out.read_text())
    assert result["families"] == ["recipe_cost"] and result["quick"] is True
    assert "--quick" in result["command"] and result["date"] and result["git_commit"]
    assert result["machine"]["cpu_count"] >= 1 and "cpu_model" in result["machine"]
    result = result["recipe_cost"]
    assert len(result["load"]["load_avg_start"]) == 3 and len(result["load"]["load_avg_end"]) == 3

    recipe = result["recipes"]["cats_vs_dogs_at2l.flags"]
    # The recipe's own settings, read from its flagfile.
    assert (recipe["batch_size"], recipe["image_shape"], recipe["epochs"]) == (64, [64, 64, 3], 10)
    assert (recipe["attack"], recipe["attack_steps"], recipe["step_flops_factor"]) == ("pgd", 5, 16)
    assert recipe["steps_per_epoch"] == 18610 // 64
    for key in ("s_per_step", "images_per_s", "forward_gflops_per_image", "epoch_minutes",
                "total_hours", "gpu_s_per_step", "gpu_images_per_s", "gpu_total_hours"):
        assert _positive(recipe[key]), key
    assert recipe["images_per_s"] == round(64 / recipe["s_per_step"], 1) or abs(
        recipe["images_per_s"] - 64 / recipe["s_per_step"]) < 1

    pipe = result["pipeline"]
    assert pipe["images"] == 160 and pipe["image_size"] == 64 and pipe["batch_size"] == 64
    assert 64 <= pipe["train_images"] < 160 and _positive(pipe["mean_jpeg_bytes"])
    assert _positive(pipe["scan_images_per_s"])
    assert len(pipe["epoch_images_per_s"]) == 2 and all(map(_positive, pipe["epoch_images_per_s"]))
    assert pipe["consumed_images_per_s"] == recipe["images_per_s"]
    assert pipe["gpu_images_per_s"] == recipe["gpu_images_per_s"]


def test_a_missing_recipe_is_a_one_line_error(tmp_path, speed):
    out = tmp_path / "pipeline.json"
    proc = speed("--quick", "--recipe=flags/no_such.flags", f"--output_json={out}")
    assert proc.returncode == 1
    errors = [l for l in proc.stderr.splitlines() if l.startswith("speed: error:")]
    assert errors == ["speed: error: recipe flagfile does not exist: flags/no_such.flags"]
    assert "Traceback" not in proc.stderr and not out.exists()


RECIPE_COSTS = os.path.join(REPO, "benchmarks", "results", "recipe_cost_cpu.json")


def test_the_recipes_open_with_the_cost_measured_in_the_stored_results(speed):
    """Each CIFAR-10 and Cats vs Dogs flagfile, after its command line, carries the cost lines
    that `--markdown_from` prints from the committed results (so its numbers come from there),
    the last one the command that measures them again."""
    proc = speed(f"--markdown_from={RECIPE_COSTS}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks, current = {}, []
    for line in proc.stdout.splitlines():
        if line.startswith("== "):
            current = blocks[line[3:]] = []
        else:
            current.append(line)
    expected = sorted(["flags/cats_vs_dogs_at2l.flags"] + [
        f"flags/{f}" for f in os.listdir(os.path.join(REPO, "flags"))
        if f.startswith("cifar10_") and f.endswith(".flags")])
    assert sorted(blocks) == expected
    stored = json.load(open(RECIPE_COSTS))
    for path, lines in blocks.items():
        text = open(os.path.join(REPO, path)).read().splitlines()
        assert text[0].startswith(f"# python -m at2l_tf.train --flagfile={path}")
        end = 1
        while text[end - 1].endswith("\\"):  # The command continues on the next line.
            end += 1
        assert text[end:end + len(lines)] == lines, path
        assert lines[-1] == f"#   python benchmarks/speed.py --family=recipe_cost --nopipeline --recipe={path}"
        record = stored["recipes"][os.path.basename(path)]
        assert record["flagfile"] == path and _positive(record["s_per_step"])


def test_the_benchmarks_readme_table_is_the_committed_run():
    stored = json.load(open(os.path.join(REPO, "benchmarks", "results", "pipeline_speed_cpu.json")))
    pipe = stored["pipeline"]
    cached = pipe["epoch_images_per_s"][1:]
    rows = {
        "one-off decode check of every file (first load)": f"{pipe['scan_images_per_s']:,.0f}",
        "first epoch: decode + resize (parallel), cache filling": f"{pipe['epoch_images_per_s'][0]:,.0f}",
        "later epochs, from the uint8 cache": f"{min(cached):,.0f}–{max(cached):,.0f}",
        "consumed by the `cats_vs_dogs_at2l` step (AT²L, PGD-5, batch 64) on this CPU":
            f"{pipe['consumed_images_per_s']:,.0f}",
        "consumed on one GPU, on paper (2 TFLOP/s sustained; 16× forward FLOPs per image)":
            f"{pipe['gpu_images_per_s']:,.0f}",
    }
    text = open(os.path.join(REPO, "benchmarks", "README.md")).read()
    for label, value in rows.items():
        assert f"| {label} | {value} |" in text, label
    assert stored["settings"]["gpu_tflops"] == 2 and pipe["images"] == 2000 and pipe["image_size"] == 64
