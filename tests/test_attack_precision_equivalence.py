"""benchmarks/attack_precision_equivalence.py, run as users run it, on the shipped reference.

A smoke run (32 images, AutoAttack fast with 3 APGD iterations): the JSON's keys, the
per-example cells adding up to the images, `--markdown_from` reprinting the run's table,
and a second run reusing both finished workdirs (no unit written again). No figure of the
model and no speed ratio is asserted.
"""

import functools
import json
import os

import pytest

SCRIPT = os.path.join("benchmarks", "attack_precision_equivalence.py")
N = 32


@pytest.fixture
def run(repo_python):
    """The benchmark with these arguments, as a user runs it (conftest's `repo_python`)."""
    return functools.partial(repo_python, SCRIPT)


def _units(root):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root) for f in files if f.endswith(".npz")
    }


def test_smoke_run_json_markdown_and_resume(tmp_path, run):
    root, out = tmp_path / "runs", tmp_path / "equiv.json"
    args = ["--model_dir=savedmodels/mnist_reference", f"--num_examples={N}", "--batch_size=16",
            "--attacks=autoattack", "--autoattack_version=fast", "--autoattack_steps=3",
            "--bootstrap=2000", f"--workdir_root={root}", f"--output_json={out}"]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "autoattack/apgd_ce" in proc.stderr  # The evaluations' progress lines.
    record = json.loads(out.read_text())
    assert record["benchmark"] == "attack_precision_equivalence"
    for key in ("settings", "eps", "native_bfloat16", "machine", "git_commit", "date", "command",
                "versions", "reports", "comparison"):
        assert key in record, key
    assert record["machine"]["cpu_model"]
    c = record["comparison"]
    for key in ("robust_accuracy", "agreement", "difference_points", "difference_interval_95",
                "interval_method", "mcnemar_exact_p", "per_attack", "timing", "decision"):
        assert key in c, key
    assert set(c["robust_accuracy"]) == {"float32", "bfloat16"}
    cells = ("both_broke", "only_float32_broke", "only_bfloat16_broke", "neither_broke")
    assert sum(c[k] for k in cells) == N
    assert len(c["only_float32_broke_indices"]) == c["only_float32_broke"]
    assert len(c["only_bfloat16_broke_indices"]) == c["only_bfloat16_broke"]
    assert all(0 <= i < N for i in c["only_float32_broke_indices"] + c["only_bfloat16_broke_indices"])
    assert c["agreement"] == (c["both_broke"] + c["neither_broke"]) / N
    for p, key in (("float32", "neither_broke"), ("bfloat16", "neither_broke")):
        other = "only_bfloat16_broke" if p == "float32" else "only_float32_broke"
        assert c["robust_accuracy"][p] * N == c[key] + c[other]
    assert c["difference_points"] == 100 * (c["only_float32_broke"] - c["only_bfloat16_broke"]) / N
    lo, hi = c["difference_interval_95"]
    assert lo <= c["difference_points"] <= hi
    assert 0 <= c["mcnemar_exact_p"] <= 1
    assert sum(c["per_attack"]["autoattack"][k] for k in cells) == N
    t = c["timing"]["autoattack"]
    assert t["seconds"]["float32"] > 0 and t["seconds"]["bfloat16"] > 0 and t["rejected"] >= 0
    assert set(t["stages"]) == {"apgd_ce", "apgd_t"}  # AutoAttack fast.
    assert all(st["rejected"] >= 0 for st in t["stages"].values())
    d = c["decision"]
    assert d["threshold_points"] == 0.1 and d["rule_measurement"] is False
    assert d["passes"] == (c["difference_points"] <= 0.1)
    for p in ("float32", "bfloat16"):
        assert os.path.isdir(root / f"{p}.work") and os.path.isfile(record["reports"][p])

    # --markdown_from reprints the table the run printed.
    table = run(f"--markdown_from={out}")
    assert table.returncode == 0, table.stderr[-2000:]
    assert table.stdout.strip() and table.stdout.strip() in proc.stdout
    assert "| robust accuracy (worst case) |" in table.stdout
    assert ("PASSES" in table.stdout) != ("FAILS" in table.stdout)

    # Run again: both finished workdirs are reused, no unit is written again.
    before = _units(root)
    assert len(before) == 2 * 2 * 2  # 2 precisions x 2 batches x (clean + autoattack).
    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _units(root) == before
    assert again.stderr.count("continuing the evaluation in") == 2
    rerun = json.loads(out.read_text())["comparison"]
    assert {k: rerun[k] for k in cells} == {k: c[k] for k in cells}
    assert rerun["timing"] == c["timing"]


def test_missing_workdir_root_exits_1_with_one_line(tmp_path, run):
    proc = run("--num_examples=8", f"--output_json={tmp_path / 'x.json'}")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith("attack_precision_equivalence:")]
    assert lines == ["attack_precision_equivalence: error: --workdir_root is required (the two "
                     "runs' workdirs, kept for resume)"], proc.stderr[-2000:]
    assert not (tmp_path / "x.json").exists()


def test_paired_statistics(repo_python):
    # In a fresh process: the script defines absl flags on import (--model_dir, --batch_size,
    # ...) that other test modules' commands define too.
    code = """
import json, sys
sys.path.insert(0, "benchmarks")
import attack_precision_equivalence as bench
import numpy as np
cells = bench.cells(np.array([True, False, True, False, True]), np.array([True, True, False, False, True]))
counts = {"both_broke": 90, "only_float32_broke": 6, "only_bfloat16_broke": 2, "neither_broke": 902}
print(json.dumps([cells, bench.mcnemar_exact_p(0, 5), bench.mcnemar_exact_p(3, 3),
                  bench.mcnemar_exact_p(0, 0), bench.bootstrap_interval(counts, 1000, 4000),
                  bench.bootstrap_interval({**counts, "only_float32_broke": 0,
                                            "only_bfloat16_broke": 0, "neither_broke": 910},
                                           1000, 100),
                  [bench.is_rule_measurement(n, a) for n, a in (
                      (10000, ["autoattack"]), (10000, ["pgd", "autoattack"]), (9999, ["autoattack"]),
                      (10000, ["pgd", "apgd_ce"]))]]))
"""
    proc = repo_python("-c", code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells, p05, p33, p00, interval, none, rule = json.loads(proc.stdout.strip().splitlines()[-1])
    # A = float32 robust, B = bfloat16 robust: index 1 only float32 broke, 2 only bfloat16 broke.
    assert cells == {"both_broke": 1, "only_float32_broke": 1, "only_bfloat16_broke": 1,
                     "neither_broke": 2, "only_float32_broke_indices": [1],
                     "only_bfloat16_broke_indices": [2]}
    assert p05 == 2 / 32 and p33 == 1.0 and p00 == 1.0
    lo, hi = interval  # Observed +0.4 points; the discordant counts' spread is about ±0.55.
    assert -0.3 < lo < 0.4 < hi < 1.2
    assert none == [0.0, 0.0]  # No discordant example: the bootstrap cannot spread.
    # The rule's measurement: AutoAttack on 10,000 images, alone or beside PGD-40 (the
    # reference's own evaluation, shared with the float32 half).
    assert rule == [True, True, False, False]
