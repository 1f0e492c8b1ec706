"""The triplet study (benchmarks/studies/triplet.py, run by benchmarks/study.py): the statistics
and the answer it writes, on a made-up state, and the driver's bad input (one line, exit 1,
nothing written)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from at2l_tf.evaluation import paired

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        path = os.path.join(ROOT, "benchmarks", "studies", "triplet.py")
        spec = importlib.util.spec_from_file_location("studies.triplet", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def _run(objective, seed, robust, n=300):
    rng = np.random.default_rng(100 * seed + len(objective))
    correct = rng.random(n) < robust
    return {"objective": objective, "seed": seed, "train_flags": [f"--objective={objective}"],
            "fast": {"clean_accuracy": 0.98, "robust_accuracy": float(correct.mean()),
                     "robust_correct": paired.encode(correct)}}


def _state(gains, trades_gain=None):
    """AT and, per name, a run whose correct set is AT's plus `gain` of the images; with
    `trades_gain`, `trades` gets that gain and `trades_best` the gains of `gains` over TRADES."""
    runs = {}
    for seed in (0, 1, 2):
        base = _run("at", seed, 0.7)
        runs[f"at/s{seed}"] = base
        at = paired.decode(base["fast"]["robust_correct"])
        if trades_gain is not None:
            trades = at | (np.arange(at.size) % int(1 / trades_gain) == 1)
            runs[f"trades/s{seed}"] = {**_run("trades", seed, 0.7), "fast": {
                "clean_accuracy": 0.98, "robust_accuracy": float(trades.mean()),
                "robust_correct": paired.encode(trades)}}
        for name, gain in gains.items():
            start = trades if name == "trades_best" else at
            better = start | (np.arange(at.size) % int(1 / gain) == 0) if gain else start.copy()
            runs[f"{name}/s{seed}"] = {**_run(name, seed, 0.7), "fast": {
                "clean_accuracy": 0.98, "robust_accuracy": float(better.mean()),
                "robust_correct": paired.encode(better)}}
    return {"runs": runs}


def test_no_gain_is_reported_as_no_effect(study):
    rows = study.report(_state({"at2l": 0, "tla_at": 0}), replicates=200)
    assert [r["objective"] for r in rows] == ["at", "at2l", "tla_at"]
    assert rows[1]["vs_at"]["difference"] == 0.0
    assert study.answer(rows).startswith("No effect of a triplet term distinguishable from zero")
    table = study.markdown({"runs": _state({"at2l": 0})["runs"]}).splitlines()
    assert table[0].startswith("No effect") and table[2].startswith("| objective |") and len(table) == 6


def test_a_clear_gain_is_named_with_its_interval(study):
    rows = study.report(_state({"at2l": 0, "at_triplet": 0.1}), replicates=200)
    sentence = study.answer(rows)
    assert sentence.startswith("AT + best triplet adds +")
    assert rows[2]["vs_at"]["low"] > 0


def test_trades_alone_beating_at_is_not_a_triplet_effect(study):
    rows = study.report(_state({"trades": 0.1, "at2l": 0}), replicates=200)
    assert study.answer(rows).startswith("No effect of a triplet term")


def test_a_triplet_on_trades_is_judged_against_trades_not_at(study):
    # TRADES beats AT by a tenth of the images; the triplet on it adds nothing to TRADES.
    rows = study.report(_state({"trades_best": 0}, trades_gain=0.1), replicates=200)
    best = next(r for r in rows if r["objective"] == "trades_best")
    assert best["vs_at"]["low"] > 0 and best["base"] == "trades"
    assert best["vs_base"]["difference"] == 0.0
    sentence = study.answer(rows)
    assert sentence.startswith("No effect of a triplet term distinguishable from zero")
    assert "TRADES + best triplet − TRADES +0.0 [+0.0, +0.0]" in sentence
    # The same triplet adding to TRADES is named, with its base.
    rows = study.report(_state({"trades_best": 0.1, "at2l": 0}, trades_gain=0.1), replicates=200)
    sentence = study.answer(rows)
    assert sentence.startswith("TRADES + best triplet adds +") and "over TRADES" in sentence
    assert "AT²L (paper) − AT +0.0" in sentence
    line = next(x for x in study.markdown({"runs": _state({"trades_best": 0.1}, trades_gain=0.1)["runs"]})
                .splitlines() if x.startswith("| TRADES + best triplet"))
    assert "(− TRADES)" in line


def test_a_triplet_that_hurts_is_said_to(study):
    state = _state({"at2l": 0})
    for seed in (0, 1, 2):  # AT²L loses a tenth of AT's images.
        at = paired.decode(state["runs"][f"at/s{seed}"]["fast"]["robust_correct"])
        worse = at & (np.arange(at.size) % 10 != 0)
        state["runs"][f"at2l/s{seed}"]["fast"].update(
            robust_accuracy=float(worse.mean()), robust_correct=paired.encode(worse))
    sentence = study.answer(study.report(state, replicates=200))
    assert sentence.startswith("No triplet term helps at this budget, and AT²L (paper) hurts: AT²L (paper) − AT -")


def test_the_forest_plot_is_drawn_from_the_state(study, tmp_path):
    png = study.plot(_state({"at2l": 0, "trades": 0.1}), str(tmp_path / "forest.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"
    png = study.plot(_state({"trades_best": 0.1}, trades_gain=0.1), str(tmp_path / "forest2.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"
    # A collapsed objective (clean accuracy of one class) is cut at the axis' edge.
    state = _state({"at2l": 0})
    for seed in (0, 1, 2):
        state["runs"][f"mart/s{seed}"] = {**_run("mart", seed, 0.1), "fast": {
            **_run("mart", seed, 0.1)["fast"], "clean_accuracy": 0.11}}
    png = study.plot(state, str(tmp_path / "forest3.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("arg, message", [
    ("--variants=at,free", "unknown variant 'free'"),
    ("--variants=at2l", "must include the reference 'at'"),
    ("--seeds=0,x", "seeds must be non-negative integers, received 'x'"),
    ("--trials=0", "trials must be >= 1, received trials=0"),
    ("--phases=tune,deploy", "unknown phase 'deploy'"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, arg, message):
    out = tmp_path / "study.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "study.py"), "--study=triplet", f"--output_json={out}", arg],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def test_a_stale_stored_report_is_not_printed(study):
    # A sitting stopped by --max_hours adds runs after the report an earlier one stored.
    state = _state({"at2l": 0})
    early = {"runs": {k: v for k, v in state["runs"].items() if k.endswith("/s0")}}
    state["report"] = study.report(early, replicates=200)
    assert study.current_report(state)[0]["seeds"] == [0, 1, 2]
    assert study.markdown(state).splitlines()[4].startswith("| AT | 3 |")
    # A report built from exactly the state's runs is the one used.
    state["report"] = study.report(state, replicates=200)
    assert study.current_report(state) is state["report"]
