"""Resume after a kill, Ctrl-C, two workers on localhost, and the headline Cats vs Dogs command.

Real processes and real signals: the train command runs in subprocesses
(MultiWorkerMirroredStrategy cannot start inside pytest's process, which has
already initialised TensorFlow), on a few hundred MNIST images and a tiny budget.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from at2l_tf import config as config_lib
from at2l_tf import evaluate, evaluation
from at2l_tf.errors import ConfigError, Interrupted
from at2l_tf.training import distribute

# FGSM adversarial training: deterministic steps, so that a resumed run can be
# compared with an uninterrupted one; 16 steps of 64 per epoch.
TINY = (
    "--max_train_examples=1024", "--batch_size=64", "--validation_size=64", "--objective=at",
    "--attack=fgsm", "--eval_attacks=fgsm", "--eval_examples=200", "--export_dir=", "--seed=3",
    "--verbose=2",
)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
ENV.pop("TF_CONFIG", None)


def _train(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "at2l_tf.train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV, **kwargs,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("train: error:")]


def _results(workdir):
    return json.loads((workdir / "results.json").read_text())


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    args = (*TINY, "--epochs=2", "--save_every_steps=3")
    whole = _train(*args, f"--workdir={tmp_path / 'whole'}")  # Side by side, same seed.
    victim_dir = tmp_path / "victim"
    victim = _train(*args, f"--workdir={victim_dir}")
    state = victim_dir / "backup" / "worker-0" / "state.npz"
    deadline = time.time() + 240
    while not state.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    code, _, err = _finish(victim)
    assert code == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (victim_dir / "results.json").exists()

    code, _, err = _finish(_train(*args, f"--workdir={victim_dir}"))
    assert code == 0, err[-3000:]
    assert "resuming from" in err
    resumed = _results(victim_dir)
    assert len(resumed["history"]["loss"]) == 2  # The configured number of epochs.
    (point,) = resumed["resumed"]
    assert point["steps_per_epoch"] == 16 and (point["epoch"], point["step"]) >= (0, 3)
    # The killed sitting's time up to its last backup counts in the run's training time.
    assert point["train_seconds_before"] > 0
    assert resumed["train_seconds"] > point["train_seconds_before"]
    # Both sittings' CPUs are on record (a run may span machines).
    cpu = resumed["precision"]["cpu_model"]
    assert point["backup_cpu_model"] == point["cpu_model"] == cpu != "unknown CPU"
    assert not state.exists()  # The backup is removed with the results written.

    code, _, err = _finish(whole)
    assert code == 0, err[-3000:]
    uninterrupted = _results(tmp_path / "whole")
    assert "resumed" not in uninterrupted
    n = resumed["test"]["num_examples"]
    for key in ("clean_accuracy", "robust_accuracy"):
        a, b = resumed["test"][key], uninterrupted["test"][key]
        p = (a + b) / 2
        noise = 3 * math.sqrt(2 * max(p * (1 - p), 0.01) / n)  # 3 standard errors of a difference.
        assert abs(a - b) <= noise, (key, a, b)


def test_two_workers_on_localhost_train_one_model(tmp_path):
    cluster = distribute.localhost_cluster(2)
    workdir, export = tmp_path / "run", tmp_path / "export"
    args = (
        "--max_train_examples=2048", "--batch_size=128", "--validation_size=128", "--objective=at2l",
        "--attack=fgsm", "--eval_attacks=fgsm", "--eval_examples=50", "--epochs=1", "--verbose=2",
        "--strategy=multi_worker", f"--workdir={workdir}", f"--export_dir={export}",
    )
    procs = [
        _train(*args, env=dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
        for i in range(2)
    ]
    outs = [_finish(p) for p in procs]
    for code, _, err in outs:
        assert code == 0, err[-3000:]
    digests = [
        [line.split()[-1] for line in err.splitlines() if "weights sha256" in line] for _, _, err in outs
    ]
    assert len(digests[0]) == 1 and digests[0] == digests[1]  # Equal weights on both workers.
    assert os.listdir(export) == ["1"]  # Exactly one export, by the chief.
    results = _results(workdir)
    assert results["workers"] == 2 and results["weights_sha256"].startswith(digests[0][0])
    assert len(results["history"]["loss"]) == 1 and "val_adv_acc" in results["history"]
    assert sorted(os.listdir(workdir)) == ["checkpoints", "logs", "model.keras", "results.json"]


def _snapshot(workdir):
    return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} if workdir.exists() else {}


def test_a_workdir_of_another_configuration_is_one_line_and_loses_nothing(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    cfg = config_lib.ExperimentConfig()
    cfg.train.epochs = 7
    (workdir / "results.json").write_text(json.dumps({"config": cfg.to_dict(), "test": {}}))
    (workdir / "model.keras").write_text("the earlier model")
    before = _snapshot(workdir)
    code, _, err = _finish(_train(*TINY, f"--workdir={workdir}"))
    assert code == 1 and "Traceback" not in err
    (line,) = _errors(err)
    assert f"train: error: workdir {workdir} holds a finished run" in line
    assert "with other settings (attack.name: 'pgd' -> 'fgsm'" in line
    assert _snapshot(workdir) == before


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ('{"cluster": {"worker": ["localhost:1"]}, "task": ', "TF_CONFIG is not valid JSON (Expecting value"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 2}}',
         "TF_CONFIG task index 2 is out of range for job 'worker' with 1 task(s)"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
         "TF_CONFIG address 'localhost' of job 'worker' is not host:port"),
        ('{"cluster": {"ps": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}',
         "TF_CONFIG job 'ps' is not supported"),
        ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG needs a "task" object'),
    ],
)
def test_a_malformed_tf_config_is_one_line_before_anything_runs(tmp_path, monkeypatch, tf_config, message):
    from at2l_tf import experiment

    monkeypatch.setenv("TF_CONFIG", tf_config)
    cfg = config_lib.ExperimentConfig(train=config_lib.TrainConfig(strategy="multi_worker"),
                                      workdir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        experiment.run(cfg)
    assert "\n" not in str(info.value) and not (tmp_path / "w").exists()


def test_an_unwritable_workdir_is_one_line(tmp_path):
    from at2l_tf import experiment

    if os.geteuid() == 0:  # Root writes anywhere: a directory cannot be made below a file.
        (tmp_path / "file").write_text("")
        workdir = tmp_path / "file" / "w"
    else:
        workdir = tmp_path / "w"
        workdir.mkdir()
        workdir.chmod(0o500)
    cfg = config_lib.ExperimentConfig(workdir=str(workdir))
    with pytest.raises(ConfigError, match=f"cannot write to workdir {re.escape(str(workdir))}: "):
        experiment.run(cfg)
    if workdir.exists():
        workdir.chmod(0o700)


def _cats_config(tmp_path, name, **train):
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(
            dataset="cats_vs_dogs", image_size=16, batch_size=16, max_train_examples=64, validation_size=0
        ),
        attack=config_lib.AttackConfig(name="fgsm"),
        train=config_lib.TrainConfig(objective="at2l", epochs=1, **train),
        eval=config_lib.EvalConfig(attacks=("fgsm",), num_examples=16),
        workdir=str(tmp_path / name),
        export_dir=str(tmp_path / f"{name}_export"),
    ).validate()


@pytest.fixture
def mock_cats():
    # TFDS' mock data (random images, labels 0/1) stands in for the 800 MB download.
    with tfds.testing.mock_data(num_examples=100):
        yield


def test_headline_cats_vs_dogs_command_trains_exports_and_evaluates(tmp_path, mock_cats, capsys):
    from at2l_tf import experiment

    results = experiment.run(_cats_config(tmp_path, "cats"), verbose=0)
    assert results["history"]["triplet"]  # Binary in-batch negatives: the other label.
    export = results["export_path"]
    assert os.path.exists(os.path.join(export, "saved_model.pb"))
    # The final check is recorded in the version it measured.
    (record,) = evaluation.record.read_records(export)
    assert record["evaluated_by"] == "train" and record["num_examples"] == 16
    assert record["robust_accuracy"] == results["test"]["robust_accuracy"]
    fv = evaluate.define_flags(evaluate.flags.FlagValues())
    fv(["evaluate", f"--model_dir={export}", "--attacks=fgsm", "--num_examples=16", "--verbose=0",
        f"--output_json={tmp_path / 'eval.json'}"])
    report = evaluate.evaluate_from_flags(fv)
    assert report["num_examples"] == 16 and report["dataset"] == "cats_vs_dogs"
    assert report["clean_accuracy"] == pytest.approx(results["test"]["clean_accuracy"])


# In a fresh process: two MirroredStrategy objects in one process can collide on
# collective-op keys (TensorFlow hands out the same ones), and the suite's own
# two-replica step test makes one.
_MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tensorflow_datasets as tfds
from at2l_tf import config as c, experiment
parts = {"data": c.DataConfig, "attack": c.AttackConfig, "train": c.TrainConfig, "eval": c.EvalConfig,
         "preprocessing": c.PreprocessingConfig, "ensemble": c.EnsembleConfig}
cfg = c.ExperimentConfig(**{k: parts[k](**v) if k in parts else v for k, v in json.loads(sys.argv[1]).items()})
with tfds.testing.mock_data(num_examples=100):
    results = experiment.run(cfg, verbose=0)
print(json.dumps(results))
"""


def test_headline_command_under_mirrored_on_two_logical_cpus(tmp_path):
    cfg = _cats_config(tmp_path, "mirrored", strategy="mirrored")
    run = subprocess.run([sys.executable, "-c", _MIRRORED, json.dumps(cfg.to_dict())],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "replicas=2" in run.stderr  # The run's own line: the batch is split over two CPUs.
    results = json.loads(run.stdout.splitlines()[-1])
    assert len(results["history"]["loss"]) == 1 and results["test"]["num_examples"] == 16
    assert os.path.exists(os.path.join(results["export_path"], "saved_model.pb"))


def test_ctrl_c_writes_a_backup_and_the_same_call_resumes(tmp_path, mock_cats, monkeypatch):
    from at2l_tf import experiment
    from at2l_tf.training import backup

    cfg = _cats_config(tmp_path, "interrupted", save_every_steps=1)
    state = tmp_path / "interrupted" / "backup" / "worker-0" / "state.npz"
    save = backup.Backup.save

    def save_then_press_ctrl_c(self, *args, **kwargs):  # Ctrl-C right after the first backup.
        save(self, *args, **kwargs)
        if kwargs["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(backup.Backup, "save", save_then_press_ctrl_c)
    with pytest.raises(Interrupted, match="run the same command again to resume"):
        experiment.run(cfg, verbose=0)
    monkeypatch.undo()
    assert state.exists() and not (tmp_path / "interrupted" / "results.json").exists()
    results = experiment.run(cfg, verbose=0)
    (point,) = results["resumed"]
    assert point["epoch"] == 0 and 1 <= point["step"] < point["steps_per_epoch"]
    assert len(results["history"]["loss"]) == 1 and not state.exists()

    other = _cats_config(tmp_path, "interrupted", save_every_steps=1)
    other.train.lambda2 = 0.25
    # λ2 unset (None) is the at2l default, 0.5.
    with pytest.raises(ConfigError, match=r"holds a finished run .*train.lambda2: None -> 0.25"):
        experiment.run(other, verbose=0)


def _ingredients_config(tmp_path, name):
    # MNIST, FGSM AT (deterministic), float32: a resumed run can match an uninterrupted one.
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=256, batch_size=64, validation_size=64),
        attack=config_lib.AttackConfig(name="fgsm"),
        train=config_lib.TrainConfig(objective="at", epochs=3, eps_warmup_epochs=2, ema=0.9, seed=2,
                                     save_every_steps=1, mixed_precision="off"),
        eval=config_lib.EvalConfig(attacks=("fgsm",), num_examples=32),
        workdir=str(tmp_path / name),
        export_dir=None,
    ).validate()


def test_a_run_resumed_mid_ramp_keeps_its_eps_schedule_and_weight_average(tmp_path, monkeypatch):
    import keras
    import numpy as np

    from at2l_tf import experiment
    from at2l_tf.training import backup

    save, written = backup.Backup.save, {}

    def save_then_press_ctrl_c(self, model, **kwargs):  # Ctrl-C in epoch 2 of 3, mid-ramp.
        save(self, model, **kwargs)
        if (kwargs["epoch"], kwargs["step"]) == (1, 1):
            written["averages"] = model.weight_average.get_values()
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(backup.Backup, "save", save_then_press_ctrl_c)
    with pytest.raises(Interrupted):
        experiment.run(_ingredients_config(tmp_path, "resumed"), verbose=0)
    monkeypatch.undo()
    state = tmp_path / "resumed" / "backup" / "worker-0" / "state.npz"
    with np.load(state) as npz:  # The backup holds the weight average beside the optimizer state.
        meta = json.loads(str(npz["meta"]))
        assert meta["num_averages"] == len(written["averages"]) > 0
        assert meta["history"]["train_eps"] == [0.075]
        (point_epoch, point_step) = meta["epoch"], meta["step"]
    assert point_epoch == 1 and point_step >= 1

    resumed = experiment.run(_ingredients_config(tmp_path, "resumed"), verbose=0)
    (point,) = resumed["resumed"]
    assert (point["epoch"], point["step"]) == (point_epoch, point_step)
    # ε per epoch over the ramp (2 epochs: eps·(e + ½)/2), the resumed epoch included.
    assert resumed["history"]["train_eps"] == pytest.approx([0.075, 0.225, 0.3])

    whole = experiment.run(_ingredients_config(tmp_path, "whole"), verbose=0)
    assert "resumed" not in whole and whole["history"]["train_eps"] == pytest.approx([0.075, 0.225, 0.3])
    a = keras.saving.load_model(str(tmp_path / "resumed" / "model.keras")).get_weights()
    b = keras.saving.load_model(str(tmp_path / "whole" / "model.keras")).get_weights()
    for u, v in zip(a, b):  # The averaged weights: the average survived the resume.
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
