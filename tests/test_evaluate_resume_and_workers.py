"""The evaluate command survives a kill, refuses another evaluation's workdir, splits
its batches over two localhost workers, and records what it measured in the SavedModel.

The shipped reference model (a copy, where the test writes into it), 80 MNIST
test images in 3 batches (32, 32, 16) and small budgets: the properties under
test do not need strong attacks. Kills and workers are real processes
(MultiWorkerMirroredStrategy cannot start inside pytest's process).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from absl import flags

from at2l_tf import errors, evaluate, evaluation, savedmodel
from at2l_tf.errors import ConfigError
from at2l_tf.training import distribute

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
REFERENCE = os.path.join(ROOT, "savedmodels", "mnist_reference")
# The defaults' attacks (FGSM, PGD, AutoAttack standard), small.
ARGS = (
    f"--model_dir={REFERENCE}", "--num_examples=80", "--batch_size=32", "--attacks=fgsm,pgd,autoattack",
    "--pgd_steps=50", "--autoattack_steps=4", "--autoattack_queries=30", "--verbose=2",
)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
ENV.pop("TF_CONFIG", None)
# Times: the only fields in which two runs of the same evaluation may differ.
TIMING = ("seconds",)


def _evaluate(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "at2l_tf.evaluate", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _without_times(report):
    """The report without its timing fields: `seconds` at the top, per attack and per stage."""
    report = json.loads(json.dumps(report))
    report.pop("seconds", None)
    for entry in report["attacks"].values():
        entry.pop("seconds")
        for stage in entry.get("stages", {}).values():
            stage.pop("seconds")
    return report


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The evaluation run once, start to end: `(report, stdout)`."""
    out = tmp_path_factory.mktemp("whole") / "report.json"
    code, stdout, err = _finish(_evaluate(*ARGS, f"--output_json={out}"))
    assert code == 0, err[-3000:]
    return json.loads(out.read_text()), stdout


def test_a_run_killed_during_the_second_attack_continues_to_the_same_report(tmp_path, uninterrupted):
    out, workdir = tmp_path / "report.json", tmp_path / "report.work"
    victim = _evaluate(*ARGS, f"--output_json={out}")
    # The second batch's FGSM is written: its PGD, the second attack, is running.
    first_attack, second_attack = workdir / "b00001-a00.npz", workdir / "b00001-a01.npz"
    deadline = time.time() + 240
    while not first_attack.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    code, _, err = _finish(victim)
    assert code == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not second_attack.exists(), "PGD finished before the kill: make it slower"
    assert not out.exists()
    assert (workdir / "b00000-a02.npz").exists()  # The first batch is whole.

    code, stdout, err = _finish(_evaluate(*ARGS, f"--output_json={out}"))
    assert code == 0, err[-3000:]
    assert "continuing the evaluation in" in err and "4 of 9 batch and attack results" in err
    resumed = json.loads(out.read_text())
    whole, whole_stdout = uninterrupted
    assert _without_times(resumed) == _without_times(whole)
    assert "stages" in resumed["attacks"]["autoattack"] and resumed["num_examples"] == 80
    # The table has no times: the same, line for line.
    assert stdout == whole_stdout


def _parse(*args):
    fv = evaluate.define_flags(flags.FlagValues())
    fv(["evaluate", *args])
    return fv


def _snapshot(directory):
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


SMALL = (f"--model_dir={REFERENCE}", "--num_examples=32", "--batch_size=32", "--attacks=fgsm,pgd",
         "--pgd_steps=2", "--verbose=0")


@pytest.mark.parametrize(
    "change, difference",
    [
        ("--pgd_steps=4", "pgd_step_size: 0.375 -> 0.1875; pgd_steps: 2 -> 4"),
        ("--seed=1", "seed: 0 -> 1"),
        ("--eps=0.2", "eps: 0.3 -> 0.2; pgd_step_size: 0.375 -> 0.25"),
        ("--num_examples=16", "num_examples: 32 -> 16"),
    ],
)
def test_another_evaluation_on_the_same_workdir_is_refused_in_one_line(tmp_path, change, difference):
    workdir = tmp_path / "w"
    first = evaluate.evaluate_from_flags(_parse(*SMALL, f"--workdir={workdir}"))
    before = _snapshot(workdir)
    with pytest.raises(ConfigError) as info:
        evaluate.evaluate_from_flags(_parse(*SMALL, f"--workdir={workdir}", change))
    assert str(info.value) == (
        f"workdir {workdir} holds an evaluation with other settings ({difference}); use another "
        "--workdir, or delete it to start again"
    )
    assert _snapshot(workdir) == before  # Nothing of the earlier run is touched.
    # What does not change the figures may change: where the JSON goes, the progress.
    again = evaluate.evaluate_from_flags(
        _parse(*SMALL, f"--workdir={workdir}", f"--output_json={tmp_path / 'r.json'}", "--verbose=2")
    )
    assert _without_times(again) == _without_times(first)
    assert set(_snapshot(workdir)) == set(before)  # Read back, not attacked again.


def test_ctrl_c_keeps_what_is_finished_and_the_same_command_continues(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    save = evaluation.store.ResultStore.save

    def save_then_press_ctrl_c(self, batch, key, unit):
        save(self, batch, key, unit)
        if key == "a00":  # Ctrl-C right after FGSM, as PGD starts.
            # What Python's SIGINT handler raises, raised here rather than by os.kill: a
            # signal's handler runs at the main thread's next bytecode, which can be a
            # __del__ run by the garbage collector, where the exception is swallowed.
            raise KeyboardInterrupt

    monkeypatch.setattr(evaluation.store.ResultStore, "save", save_then_press_ctrl_c)
    with pytest.raises(errors.Interrupted, match=f"interrupted; .* are in {workdir}; run the same"):
        evaluate.evaluate_from_flags(_parse(*SMALL, f"--workdir={workdir}"))
    monkeypatch.undo()
    assert sorted(p.name for p in workdir.iterdir()) == [
        "b00000-a00.npz", "b00000-clean.npz", "evaluation.json"
    ]
    resumed = evaluate.evaluate_from_flags(_parse(*SMALL, f"--workdir={workdir}"))
    whole = evaluate.evaluate_from_flags(_parse(*SMALL, f"--workdir={tmp_path / 'whole'}"))
    assert _without_times(resumed) == _without_times(whole)


def test_two_localhost_workers_give_the_numbers_of_one(tmp_path, uninterrupted):
    cluster = distribute.localhost_cluster(2)
    out = tmp_path / "report.json"
    procs = []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        # A workdir each, as on two machines: the results travel through collectives.
        procs.append(_evaluate(*ARGS, f"--output_json={out}", f"--workdir={tmp_path / f'w{i}'}",
                               "--strategy=multi_worker", env=env))
    (code0, stdout0, err0), (code1, stdout1, err1) = [_finish(p) for p in procs]
    assert code0 == 0 and code1 == 0, (err0[-3000:], err1[-3000:])
    whole, whole_stdout = uninterrupted
    report = json.loads(out.read_text())  # Written by the chief alone.
    assert report["robust_accuracy"] == whole["robust_accuracy"]
    assert _without_times(report) == _without_times(whole)
    assert stdout0 == whole_stdout and stdout1 == ""  # Only the chief prints the table.
    # Worker 0 attacked batches 0 and 2, worker 1 batch 1.
    batches = lambda w: sorted({p.name[:6] for p in (tmp_path / w).glob("b*.npz")})  # noqa: E731
    assert batches("w0") == ["b00000", "b00002"] and batches("w1") == ["b00001"]
    assert "worker-1: batch 2/3 autoattack" in err1


def test_record_is_written_into_the_version_and_shown(tmp_path, capsys):
    model = tmp_path / "reference"
    shutil.copytree(REFERENCE, model)  # The shipped model stays as it is.
    digest = savedmodel.model_digest(str(model))
    path = pathlib.Path(savedmodel.resolve_saved_model_dir(str(model))) / "assets" / "robustness.json"
    shipped = json.loads(path.read_text())["records"]  # The version's own measurements.
    report = evaluate.evaluate_from_flags(_parse(*SMALL, f"--model_dir={model}", "--record"))
    records = json.loads(path.read_text())["records"]
    assert records[:-1] == shipped  # Appended, newest last.
    record = records[-1]
    assert record["evaluated_by"] == "evaluate" and record["package_version"]
    for key in ("clean_accuracy", "robust_accuracy", "num_examples", "eps", "robust_accuracy_attacks"):
        assert record[key] == report[key], key
    assert record["attacks"]["pgd"]["params"] == {"eps": 0.3, "seed": 0, "steps": 2,
                                                  "step_size": 0.375, "restarts": 1}
    assert record["dataset"] == "mnist" and record["split"] == "test" and record["date"]
    assert record["gradient_masking_flags"] == [f["check"] for f in report["flags"]]
    assert "git_commit" in record
    assert savedmodel.model_digest(str(model)) == digest  # Graph and weights untouched.
    assert savedmodel.load_classifier(str(model)).num_classes == 10  # Still loads.
    capsys.readouterr()
    shown = evaluate.evaluate_from_flags(_parse(f"--show={model}"))
    assert shown == records
    printed = capsys.readouterr().out
    assert f"robust {report['robust_accuracy']:.2%}" in printed and str(path) in printed
    assert evaluate.evaluate_from_flags(_parse(f"--show={REFERENCE}")) == shipped
    bare = tmp_path / "bare"  # A version exported before records existed.
    shutil.copytree(REFERENCE, bare)
    os.remove(os.path.join(savedmodel.resolve_saved_model_dir(str(bare)), "assets", "robustness.json"))
    with pytest.raises(ConfigError, match="no robustness record in"):
        evaluate.evaluate_from_flags(_parse(f"--show={bare}"))
    with pytest.raises(ConfigError, match="--record records a white-box evaluation"):
        evaluate.evaluate_from_flags(_parse(*SMALL, f"--model_dir={model}", "--record",
                                            f"--source_model_dir={REFERENCE}"))
