"""The tune command in KerasTuner's distributed mode: a chief and two workers on
localhost, and the environment and flag errors that stop a process before it starts.

The processes are real (`python -m at2l_tf.tune` subprocesses on a free port), on
a tiny budget: 256 MNIST images, one epoch of FGSM training, an objective of
APGD-CE with 2 steps on 64 validation images.
"""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest
from absl import flags

from at2l_tf import fileio, tune
from at2l_tf.tune import __main__ as tune_cli  # The entry point: defines the tune flags.
from at2l_tf.tune import distributed
from at2l_tf.errors import ConfigError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TINY = [
    "--model=mnist_small", "--objective=at", "--attack=fgsm", "--eps=0.3", "--epochs=1",
    "--batch_size=64", "--max_train_examples=256", "--validation_size=64", "--learning_rate=0.003",
    "--eval_examples=0", "--export_dir=", "--objective_attack=apgd_ce", "--objective_steps=2",
    "--objective_examples=64", "--verbose=0",
]
ENV = {k: v for k, v in os.environ.items() if k not in (*distributed.ROLE_VARS, "TF_CONFIG")}
ENV.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
TF_CHATTER = ("E0000", "I0000", "W0000", "WARNING: All log")
pytestmark = [
    # KerasTuner 1.4.8's oracle lock calls threading.currentThread().getName().
    pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:getName:DeprecationWarning"),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _role_env(tuner_id, port):
    return dict(ENV, KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                KERASTUNER_ORACLE_PORT=str(port))


def _start(tmp_path, name, env, *args):
    """`python -m at2l_tf.tune` in the background, its stdout and stderr to files."""
    out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "at2l_tf.tune", *args], stdout=out, stderr=err,
                            env=env, cwd=ROOT, text=True)
    out.close(), err.close()
    return proc


def _trial_ids(stderr, what):
    """The trial ids of the `[at2l_tf] trial <id> <what>` lines."""
    return [line.split()[2] for line in stderr.splitlines()
            if line.startswith("[at2l_tf] trial ") and line.split()[3].rstrip(":") == what]


def test_a_chief_and_two_workers_run_one_search(tmp_path):
    tune_dir, port = tmp_path / "search", _free_port()
    args = (*TINY, "--max_trials=4", f"--tune_dir={tune_dir}")
    names = ("chief", "worker0", "worker1")
    # All three at once: the workers wait for the chief's oracle.
    procs = {name: _start(tmp_path, name, _role_env(name, port), *args) for name in names}
    try:
        deadline = time.time() + 600  # Generous: the CPUs here are shared.
        for proc in procs.values():
            proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = {name: (tmp_path / f"{name}.err").read_text() for name in names}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {err[name][-3000:]}"

    summary = json.loads((tune_dir / "summary.json").read_text())
    trials = summary["trials"]
    assert sorted(t["trial_id"] for t in trials) == ["0", "1", "2", "3"]
    for t in trials:
        assert t["status"] == "COMPLETED" and 0.0 <= t["val_robust_acc"] <= 1.0, t
        assert t["seconds"] > 0 and t["best_epoch"] == 1
    assert len({t["tuned"]["lambda1"] for t in trials}) == 4  # One oracle: no trial drawn twice.
    best = max(trials, key=lambda t: t["val_robust_acc"])
    assert summary["best"]["trial_id"] == best["trial_id"]
    assert (tune_dir / "best.flags").read_text().startswith("# python -m at2l_tf.train --flagfile=")

    # Each worker ran (and logged) at least one trial; together, every trial once.
    ran = {name: _trial_ids(err[name], "end") for name in ("worker0", "worker1")}
    assert all(ran.values()), ran
    assert sorted(ran["worker0"] + ran["worker1"]) == ["0", "1", "2", "3"]
    for name in ran:
        assert sorted(_trial_ids(err[name], "start")) == sorted(ran[name])
        assert "the chief writes summary.json" in err[name]
        assert (tmp_path / f"{name}.out").read_text().strip() == ""  # The table is the chief's.
    # The chief logs every trial with the worker that ran it, and prints the table.
    assert sorted(_trial_ids(err["chief"], "end")) == ["0", "1", "2", "3"]
    for name in ran:
        for tid in ran[name]:
            assert f"[at2l_tf] trial {tid} start on {name}:" in err["chief"]
    table = (tmp_path / "chief.out").read_text()
    assert "val_robust_acc" in table.splitlines()[0] and f"* {best['trial_id']} " in table
    assert json.loads((tune_dir / "search.json").read_text())["max_trials"] == 4

    # The same search resumed on one machine: every trial is kept, none runs again.
    _parse(*args)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        _, resumed = tune_cli.tune_from_flags()
    assert "resuming a random search" in stderr.getvalue() and "4 of 4 trials done" in stderr.getvalue()
    assert not _trial_ids(stderr.getvalue(), "start")
    assert resumed["trials"] == summary["trials"]


@pytest.mark.parametrize(
    "environ, match",
    [
        ({"KERASTUNER_ORACLE_IP": "127.0.0.1"},
         "KERASTUNER_ORACLE_IP is set but KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_PORT are not"),
        ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_TUNER_ID": "chief"},
         "KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP are set but KERASTUNER_ORACLE_PORT is not"),
        ({"KERASTUNER_TUNER_ID": "worker0"}, "KERASTUNER_TUNER_ID is set but"),
        ({"KERASTUNER_ORACLE_PORT": "8000"}, "KERASTUNER_ORACLE_PORT is set but"),
        ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "80a"},
         "KERASTUNER_ORACLE_PORT must be an integer in 1-65535, received KERASTUNER_ORACLE_PORT='80a'"),
        ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "0"},
         "must be an integer in 1-65535"),
        ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": " 8000"},
         "must be an integer in 1-65535, received KERASTUNER_ORACLE_PORT=' 8000'"),
        ({"KERASTUNER_TUNER_ID": " ", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"},
         "KERASTUNER_TUNER_ID is empty"),
    ],
)
def test_a_half_set_environment_is_a_one_line_error(environ, match):
    with pytest.raises(ConfigError) as info:
        tune.tuner_role(environ)
    assert match in str(info.value) and "\n" not in str(info.value)


def test_roles_follow_kerastuners_rule():
    assert tune.tuner_role({"PATH": "/bin"}) is None
    env = {"KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    chief = tune.tuner_role({**env, "KERASTUNER_TUNER_ID": "chief-0"})
    worker = tune.tuner_role({**env, "KERASTUNER_TUNER_ID": "worker3"})
    assert (chief.chief, worker.chief, worker.address, worker.tuner_id) == (True, False, "10.0.0.1:8000", "worker3")


def test_the_command_exits_1_with_one_line_on_a_half_set_environment(tmp_path):
    env = dict(ENV, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_TUNER_ID="worker0")
    run = subprocess.run([sys.executable, "-m", "at2l_tf.tune", *TINY, f"--tune_dir={tmp_path / 't'}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 1
    assert [l for l in run.stderr.splitlines() if l and not l.startswith(TF_CHATTER)] == [
        "tune: error: KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP are set but KERASTUNER_ORACLE_PORT is not: "
        "a distributed search needs all of KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT "
        "(or none of them, to search on one machine)"
    ]
    assert not (tmp_path / "t").exists()


@pytest.fixture
def fake_chief():
    """A gRPC server with no service: enough for a worker to see the chief answer."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def _parse(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tune", *args])


@pytest.fixture(autouse=True)
def _reset_flags():
    yield
    flags.FLAGS.unparse_flags()


def _chief_search_json(tune_dir, *args):
    """Writes the search.json a chief started with `args` would write."""
    _parse(*TINY, f"--tune_dir={tune_dir}", *args)
    record = tune.search_record(*tune_cli.settings_from_flags())
    fileio.atomic_write_json(os.path.join(tune_dir, "search.json"), record)
    flags.FLAGS.unparse_flags()


def test_a_worker_with_other_flags_than_the_chief_is_refused(tmp_path, monkeypatch, fake_chief):
    tune_dir = tmp_path / "search"
    _chief_search_json(tune_dir, "--max_trials=4")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(fake_chief))
    _parse(*TINY, f"--tune_dir={tune_dir}", "--max_trials=2", "--lambda1_range=0.5,1")
    with pytest.raises(ConfigError) as info:
        tune_cli.tune_from_flags()
    message = str(info.value)
    assert message.startswith(f"this worker's flags differ from the chief's search in {tune_dir} "
                              "(search_space.lambda1_range: [0.5, 2.0] -> [0.5, 1.0])")
    assert message.endswith("start every worker with the chief's flags") and "\n" not in message
    assert sorted(os.listdir(tune_dir)) == ["search.json"]  # The worker wrote nothing.

    _parse(*TINY, f"--tune_dir={tmp_path / 'elsewhere'}")  # Not the chief's directory.
    with pytest.raises(ConfigError, match="search.json does not exist: a worker needs the chief's --tune_dir"):
        tune_cli.tune_from_flags()
    _parse(*TINY, f"--tune_dir={tune_dir}", "--overwrite")
    with pytest.raises(ConfigError, match="--overwrite is the chief's"):
        tune_cli.tune_from_flags()
    _parse(*TINY, f"--tune_dir={tune_dir}", "--lambda1_range=2,1")  # Bad flags: before any wait.
    with pytest.raises(ConfigError, match="lambda1_range must have min <= max"):
        tune_cli.tune_from_flags()


def test_a_worker_without_a_chief_gives_up_after_its_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(_free_port()))
    _parse(*TINY, f"--tune_dir={tmp_path / 't'}", "--wait_for_chief=1")
    start = time.time()
    with pytest.raises(ConfigError, match=r"no chief answered at 127.0.0.1:\d+ within 1 s \(--wait_for_chief\)"):
        tune_cli.tune_from_flags()
    assert time.time() - start < 30 and not (tmp_path / "t").exists()


def test_a_chief_cannot_take_a_busy_port(tmp_path, monkeypatch, fake_chief):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(fake_chief))
    _parse(*TINY, f"--tune_dir={tmp_path / 't'}")
    with pytest.raises(ConfigError, match=f"the chief cannot listen on 127.0.0.1:{fake_chief} "):
        tune_cli.tune_from_flags()
    assert not (tmp_path / "t").exists()
