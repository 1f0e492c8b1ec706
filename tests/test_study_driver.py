"""benchmarks/study.py, the one study driver, run for real at a tiny budget (300 training images,
1 epoch, 100 test images): train → evaluate → JSON → markdown, per-example pairing, the reuse
of finished runs, `--max_hours` (and its estimate of a run) and a flag the study varies; and a
retained study (precision) through the train command's own final check, its table printed from
the JSON it wrote."""

import functools
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--max_train_examples=300", "--epochs=1", "--attack_steps=2")
STUDY = '''
from studylib import Evaluation, Study, Variant

STUDY = Study(
    name="tiny",
    variants=(Variant("at", ("--objective=at",), "AT"), Variant("at2l", ("--objective=at2l",), "AT²L")),
    recipe=("--eval_examples=0",),
    seeds=(0,),
    evaluation=Evaluation(autoattack="fast", examples=100),
    pairs=(("at", "at2l"),),
)
'''


@pytest.fixture(scope="module")
def study(repo_python):
    """`benchmarks/study.py` with these arguments, run as a user runs it (`repo_python`)."""
    return functools.partial(repo_python, os.path.join("benchmarks", "study.py"), timeout=None)


def _ok(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, study):
    """The tiny paired study, run once: its config, scratch directory, JSON and printed table."""
    tmp = tmp_path_factory.mktemp("study")
    config = tmp / "tiny.py"
    config.write_text(STUDY)
    out = tmp / "tiny.json"
    run = _ok(study(f"--study={config}", f"--study_dir={tmp / 'runs'}", f"--output_json={out}",
                     "--bootstrap_replicates=50", *TINY))
    return config, tmp, out, run


def test_a_study_trains_evaluates_pairs_and_prints_its_table(tiny, study):
    config, tmp, out, run = tiny
    state = json.loads(out.read_text())
    assert state["complete"] is True and sorted(state["runs"]) == ["at/s0", "at2l/s0"]
    for key, run_record in state["runs"].items():
        fast = run_record["fast"]
        assert fast["num_examples"] == 100 and len(fast["robust_correct"]) == 100
        assert run_record["robust_accuracy"] == fast["robust_accuracy"] <= run_record["clean_accuracy"]
        assert run_record["epochs"] == 1 and run_record["train_flags"] == [f"--objective={key.split('/')[0]}"]
    pair = state["report"]["pairs"]["at2l − at"]
    assert pair["bootstrap"]["num_examples"] == 100 and pair["bootstrap"]["seeds"] == [0]
    assert pair["bootstrap"]["low"] <= pair["bootstrap"]["difference"] <= pair["bootstrap"]["high"]
    # One provenance: the command, the machine's CPU, the commit under `git_commit`, the date.
    assert state["command"].startswith("python benchmarks/study.py --study=")
    assert "cpu_model" in state["machine"] and "git_commit" in state and "commit" not in state
    assert state["date"] and len(state["sittings"]) == 1
    # The table printed at the end is the one --markdown_from prints from the JSON.
    table = _ok(study(f"--study={config}", f"--markdown_from={out}")).stdout
    assert table == run.stdout and table.startswith("| variant | seeds | clean | **robust** |")
    assert "| at2l − at | " in table


def test_a_finished_run_is_reused_and_a_spent_budget_stops_before_a_run(tiny, study):
    config, tmp, out, _ = tiny
    again = tmp / "again.json"
    run = _ok(study(f"--study={config}", f"--study_dir={tmp / 'runs'}", f"--output_json={again}",
                     "--bootstrap_replicates=50", *TINY))
    assert run.stderr.count("reusing the finished run") == 2 and "at2l_tf.train" not in run.stderr
    first, second = (json.loads(p.read_text())["runs"] for p in (out, again))
    assert [r["fast"]["clean_correct"] for r in first.values()] == [r["fast"]["clean_correct"] for r in second.values()]
    stopped = tmp / "stopped.json"
    run = _ok(study(f"--study={config}", f"--study_dir={tmp / 'other'}", f"--output_json={stopped}",
                     "--max_hours=0", *TINY))
    state = json.loads(stopped.read_text())
    assert "stopping before run at/s0" in run.stderr and state["runs"] == {} and state["complete"] is False


def test_the_budget_expects_a_run_to_take_what_its_variant_took(benchmarks_module):
    """`--max_hours` stops before a run that would overrun it, so a variant's estimate is its own
    finished runs (a wide network's 50 min, not the study's mean of 20); one with none yet takes
    the mean of every run."""
    study_runs = benchmarks_module("study_runs")
    runs = {"small/s0": {"variant": "small", "run_seconds": 300.0}, "wide/s0": {"variant": "wide", "run_seconds": 3000.0},
            "small/s1": {"variant": "small", "run_seconds": 330.0}, "wide/s1": {"variant": "wide"}}  # Not judged yet.
    assert study_runs.run_seconds(runs, "wide") == [3000.0] and study_runs.run_seconds(runs, "new") == [300.0, 3000.0, 330.0]
    budget = study_runs.Budget(0.5)
    assert budget.allows(study_runs.run_seconds(runs, "small"), "run small/s2")
    assert budget.allows(study_runs.run_seconds(runs, "new"), "run new/s0")  # 20 min of the 30.
    assert not budget.allows(study_runs.run_seconds(runs, "wide"), "run wide/s2")


def test_a_study_from_another_cpu_is_not_resumed_here(tiny, study):
    config, tmp, out, _ = tiny
    record = json.loads(out.read_text())
    for sitting in record["sittings"]:  # As if the runs had been made on another CPU.
        sitting["machine"] = {**sitting["machine"], "cpu_model": "Other CPU", "cpu_family_model": "1/2"}
    other = tmp / "other_cpu.json"
    other.write_text(json.dumps(record))
    before = other.read_text()
    run = study(f"--study={config}", f"--study_dir={tmp / 'runs'}", f"--output_json={other}",
                "--bootstrap_replicates=50", *TINY)
    assert run.returncode == 1 and f"study: error: {other} holds runs made on Other CPU (1/2); this machine is " in run.stderr
    assert "own --output_json" in run.stderr and other.read_text() == before


def test_a_flag_the_study_varies_is_refused(tmp_path, study):
    run = study("--study=defenses", f"--output_json={tmp_path / 'x.json'}",
                "--defense=trades")  # The deprecated alias of --objective.
    assert run.returncode == 1 and "study: error: --objective is what the study varies" in run.stderr
    assert not (tmp_path / "x.json").exists()


def test_the_precision_study_runs_through_the_final_check_and_prints_its_table(tmp_path, study):
    out = tmp_path / "precision.json"
    run = _ok(study("--study=precision", "--seeds=0", f"--study_dir={tmp_path / 'runs'}", f"--output_json={out}",
                     "--eval_examples=100", "--eval_pgd_steps=5", *TINY))
    state = json.loads(out.read_text())
    assert state["complete"] is True and sorted(state["runs"]) == ["bfloat16/s0", "off/s0"]
    assert [state["runs"][k]["policy"] for k in ("off/s0", "bfloat16/s0")] == ["float32", "mixed_bfloat16"]
    assert set(state["runs"]["off/s0"]["accuracy"]) == {"fgsm", "pgd", "autoattack"}
    lines = run.stdout.splitlines()
    assert lines[0].startswith("| precision | seeds |") and lines[2].startswith("| float32 (`--mixed_precision=off`) | 0 |")
    assert lines[4].startswith("| bfloat16 − off, per seed | |") and len(lines) == 5
    assert _ok(study("--study=precision", f"--markdown_from={out}")).stdout == run.stdout


def test_a_study_with_searched_designs_checks_its_variants_before_any_search(tmp_path, benchmarks_module):
    """The triplet study's `trades_best` takes its design from `at_triplet`'s search: before
    that search exists (a new study, or the check that precedes a resumed one), its
    configuration is checked with the untuned flags instead of failing on the missing search."""
    study_runs = benchmarks_module("study_runs")
    study = benchmarks_module("studies.triplet").STUDY
    assert any(v.design_from for v in study.variants)
    driver = study_runs.Driver(study, variants=[v.name for v in study.variants], seeds=[0], study_dir=str(tmp_path))
    assert [v.name for v in driver.variants] == [v.name for v in study.variants]
    assert not any(tmp_path.iterdir())  # The checks write nothing.


def test_an_attack_suite_study_runs_naive_and_adaptive_columns(tmp_path, study):
    """Table 1's configuration at a tiny budget: the thermometer row gets LS-PGA and BPDA through its
    encoding, the row without a layer neither; the table printed is the one --markdown_from prints."""
    out = tmp_path / "table1.json"
    run = _ok(study("--study=thermometer", "--variants=ori,then0", f"--study_dir={tmp_path / 'runs'}",
                     f"--output_json={out}", "--test_examples=8", "--max_train_examples=300", "--epochs=1",
                     "--eps=0.25"))
    state = json.loads(out.read_text())
    ori, then0 = (state["runs"][k]["report"]["attacks"] for k in ("ori/s0", "then0/s0"))
    assert {a["eps"] for a in [*ori.values(), *then0.values()] if "eps" in a} == {0.25}  # --eps: train and judge.
    assert "ls_pga" not in ori and then0["ls_pga"]["adaptive"] == "behind thermometer"
    assert then0["bpda_pgd"]["adaptive"] == "bpda" and "adaptive" not in then0["pgd"] | ori["bpda_pgd"]
    assert then0["bpda_apgd_ce"]["seed"] == 0 and then0["square"]["queries"] == 1000
    lines = run.stdout.splitlines()
    assert lines[0].startswith("| row | clean | FGSM | PGD-40 | LS-PGA-7 |") and len(lines) == 4
    assert lines[2].startswith("| Ori |") and lines[2].split(" | ")[4] == "–"
    assert _ok(study("--study=thermometer", f"--markdown_from={out}")).stdout == run.stdout


def test_a_study_with_its_own_judge_runs_what_its_runs_need_first(tmp_path, study):
    """The figures' configuration at a tiny budget: the source models first (the ensemble's static
    model is named by a flag, the transfer source by `needs`), then a curve per epoch, the table and
    the figures; a variant without the runs it needs is refused before anything runs."""
    refused = study("--study=ensemble", "--variants=source_mnist_c,at2l_gra",
                    f"--output_json={tmp_path / 'x.json'}")
    assert refused.returncode == 1 and "must include 'source_mnist_b', whose run 'at2l_gra' uses" in refused.stderr
    out = tmp_path / "figures" / "ensemble.json"
    run = _ok(study("--study=ensemble", "--variants=source_mnist_b,source_mnist_c,at2l_gra", f"--output_json={out}",
                     f"--study_dir={tmp_path / 'runs'}", "--test_examples=8", "--eval_examples=8",
                     "--max_train_examples=300", "--ensemble_cw_steps=2"))
    state = json.loads(out.read_text())
    gra = state["runs"]["at2l_gra/s0"]
    assert [p["epoch"] for p in gra["curve"]] == list(range(1, 7)) and gra["strongest"]["num_examples"] == 8
    assert "source_mnist_b/s0/model.keras" in " ".join(json.loads(
        (tmp_path / "runs" / "runs" / "at2l_gra" / "s0" / "results.json").read_text())["config"]["ensemble"]["static_models"])
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| AT²L-Gra |")
    figure = json.loads((tmp_path / "figures" / "fig1_whitebox.json").read_text())
    assert figure["num_examples"] == 8 and [s["label"] for s in figure["panels"][0]["series"]] == ["AT²L-Gra"]
    assert not (tmp_path / "figures" / "fig3_tr.json").exists()  # None of its models ran.
