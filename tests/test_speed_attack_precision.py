"""benchmarks/speed.py --family=attack_precision --quick, run as users run it, and its bad input.

Timings are not checked (they depend on the machine and its load); the counts are:
the FLOPs of one forward pass match a hand count, the float32 runs call no judge and
the bfloat16 runs do, every share of the peak is a share, and the peak follows the
CPU's flags.
"""

import functools
import json
import os

import pytest

SCRIPT = os.path.join("benchmarks", "speed.py")
# mnist_small per image: conv 3x3 1->32 (26x26 out), conv 3x3 32->64 (11x11 out),
# dense 1600->128, dense 128->10; 2 FLOP per multiply-add.
MNIST_SMALL_FORWARD = 2 * (26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 1600 * 128 + 128 * 10)


@pytest.fixture
def speed(repo_python):
    """`speed.py --family=attack_precision` with these arguments, run as a user runs it (`repo_python`)."""
    return functools.partial(repo_python, SCRIPT, "--family=attack_precision")


def test_quick_run_writes_the_documented_json(tmp_path, speed):
    out = tmp_path / "p.json"
    proc = speed("--quick", f"--output_json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["families"] == ["attack_precision"] and result["quick"] is True
    result = result["attack_precision"]
    assert result["forward_flop_per_image"] == MNIST_SMALL_FORWARD
    # The profiler also counts bias adds, activations and pooling: a little more.
    assert MNIST_SMALL_FORWARD <= result["profiler_forward_flop_per_image"] <= 1.1 * MNIST_SMALL_FORWARD
    pk = result["peak"]
    assert pk["float32_gflops"] > 0 and pk["bfloat16_gflops"] >= pk["float32_gflops"]
    assert pk["assumptions"] and pk["clock_ghz"] > 0
    assert set(result["attacks"]) == {"apgd_ce", "apgd_t", "square"}
    for name, rec in result["attacks"].items():
        f32, bf16 = rec["float32"], rec["bfloat16"]
        assert f32["judge_images"] == 0 and f32["rejected"] is None, name
        assert bf16["judge_images"] > 0 and bf16["rejected"] >= 0, name  # Verdicts in float32.
        for r in (f32, bf16):
            assert r["search_images"] > 0 and r["wall_s"] > 0 and 0 < r["share_of_peak"] <= 1, name
            total = (r["search_gflop"] + r["judge_gflop"]) / r["wall_s"]
            assert r["gflops"] == pytest.approx(total, rel=0.02, abs=0.02), name
        assert rec["bfloat16_speedup"] == pytest.approx(f32["wall_s"] / bf16["wall_s"], rel=0.01)
    assert "apgd_ce" in proc.stdout and "share_of_peak" in proc.stdout


def test_peak_follows_the_cpu_flags(repo_python):
    # In a fresh process: the family defines absl flags on import (--model_dir, --cores, ...)
    # that other test modules' commands may define too.
    code = """
import json, sys
sys.path.insert(0, "benchmarks")
import speed_attack_precision as bench
print(json.dumps([
    bench.peak({"avx512f", "avx512_bf16"}, cores=2, clock_ghz=2.5),
    bench.peak({"avx512f", "avx512_bf16", "amx_bf16"}, cores=2, clock_ghz=2.5),
    bench.peak({"avx2", "fma"}, cores=4, clock_ghz=3.0, bf16=48),
]))
"""
    proc = repo_python("-c", code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    zen5, amx, avx2 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (zen5["float32_gflops"], zen5["bfloat16_gflops"]) == (320.0, 640.0)
    assert amx["bfloat16_gflops"] == 2 * 2.5 * 1024
    assert (avx2["float32_gflops"], avx2["bfloat16_gflops"]) == (384.0, 576.0)


def test_bad_input_exits_1_with_one_line(tmp_path, speed):
    out = tmp_path / "p.json"
    proc = speed("--quick", "--batch_size=0", f"--output_json={out}")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("speed:")]
    assert lines == ["speed: error: batch_size must be >= 1, received batch_size=0"], proc.stderr[-2000:]
    assert not out.exists()
