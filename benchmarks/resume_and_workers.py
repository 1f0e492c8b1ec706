r"""Resume after a kill, and two workers, measured: benchmarks/README.md, "Resume after a kill,
and two workers", defines the table.

    python benchmarks/resume_and_workers.py --output_json=benchmarks/results/resume_and_workers_cpu.json

Every run is `python -m at2l_tf.train` in a subprocess on `--train_flags`: **resume**, an
uninterrupted run beside one killed with SIGKILL right after its first mid-epoch backup
(`--save_every_steps`) and started again with the same command (their final checks and the
difference against its standard error); **workers**, one epoch under
`--strategy=multi_worker` with one worker and with two on localhost ports (`TF_CONFIG`).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import provenance  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.training import distribute  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 8192, "Training images (the first ones of MNIST's train split).")
flags.DEFINE_integer("epochs", 2, "Epochs of the resume comparison.")
flags.DEFINE_integer("eval_examples", 1000, "Test images of the final check.")
flags.DEFINE_integer("save_every_steps", 10, "Mid-epoch backups of the killed run (it is killed after the first).")
flags.DEFINE_list("train_flags", ["--objective=at", "--attack=fgsm", "--batch_size=128", "--seed=0"],
                  "Flags shared by every run.")
flags.DEFINE_string("workdir", "runs/resume_and_workers", "Where the runs go (emptied first).")
flags.DEFINE_string("output_json", None, "Where to write the measurements.")
flags.DEFINE_string("machine_note", "shared machine: other benchmarks were running at the same time",
                    "What else ran on the machine (recorded as is).")


def _train(args, env=None):
    env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "at2l_tf.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc, what):
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {err[-3000:]}")
    return out, err


def _common(workdir, *extra):
    return [*FLAGS.train_flags, f"--max_train_examples={FLAGS.train_examples}",
            f"--eval_examples={FLAGS.eval_examples}", "--eval_attacks=fgsm", "--export_dir=",
            "--verbose=2", f"--workdir={workdir}", *extra]


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _table(res):
    t = res["test"]
    return {"clean_accuracy": t["clean_accuracy"], "fgsm_accuracy": t["attacks"]["fgsm"]["accuracy"],
            "num_examples": t["num_examples"]}


def measure_resume(root):
    args = [f"--epochs={FLAGS.epochs}", f"--save_every_steps={FLAGS.save_every_steps}"]
    whole_dir, killed_dir = os.path.join(root, "uninterrupted"), os.path.join(root, "killed")
    t0 = time.time()
    _wait(_train(_common(whole_dir, *args)), "uninterrupted run")
    whole_seconds = time.time() - t0

    t0 = time.time()
    victim = _train(_common(killed_dir, *args))
    state = os.path.join(killed_dir, "backup", "worker-0", "state.npz")
    while not os.path.exists(state) and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    if victim.returncode != -signal.SIGKILL:
        raise RuntimeError("the run finished before it was killed: lower --save_every_steps")
    killed_after = time.time() - t0
    t0 = time.time()
    _wait(_train(_common(killed_dir, *args)), "resumed run")
    resumed_seconds = time.time() - t0

    whole, resumed = _results(whole_dir), _results(killed_dir)
    a, b = _table(whole), _table(resumed)
    n = a["num_examples"]
    diff = {}
    for key in ("clean_accuracy", "fgsm_accuracy"):
        p = (a[key] + b[key]) / 2
        se = math.sqrt(2 * p * (1 - p) / n)
        diff[key] = {"resumed_minus_uninterrupted": round(b[key] - a[key], 4), "standard_error": round(se, 4)}
    return {
        "uninterrupted": {**a, "wall_seconds": round(whole_seconds, 1), "history": whole["history"]},
        "killed_and_resumed": {**b, "killed_after_seconds": round(killed_after, 1),
                               "resumed_wall_seconds": round(resumed_seconds, 1),
                               "resumed_from": resumed["resumed"], "history": resumed["history"]},
        "difference": diff,
    }


def measure_workers(root):
    out = {}
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    for n in (1, 2):
        workdir = os.path.join(root, f"workers_{n}")
        args = _common(workdir, "--epochs=1", "--strategy=multi_worker")
        cluster = distribute.localhost_cluster(n)
        t0 = time.time()
        procs = [
            _train(args, env if n == 1 else dict(env, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}})))
            for i in range(n)
        ]
        errs = [_wait(p, f"worker {i} of {n}")[1] for i, p in enumerate(procs)]
        wall = time.time() - t0
        res = _results(workdir)
        digests = {line.split()[-1] for err in errs for line in err.splitlines() if "weights sha256" in line}
        out[f"{n}_worker{'s' if n > 1 else ''}"] = {
            "wall_seconds": round(wall, 1),
            "chief_train_seconds": res["train_seconds"],
            "examples_per_second": round(FLAGS.train_examples / res["train_seconds"], 1),
            "workers_agree_on_weights": len(digests) == 1,
            **_table(res),
        }
    one, two = out["1_worker"], out["2_workers"]
    out["two_over_one_train_seconds"] = round(two["chief_train_seconds"] / one["chief_train_seconds"], 2)
    return out


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    os.makedirs(FLAGS.workdir)
    started, load_before = time.time(), os.getloadavg()
    record = {
        "benchmark": "resume_and_workers", "train_flags": FLAGS.train_flags, "train_examples": FLAGS.train_examples,
        "eval": f"first {FLAGS.eval_examples} MNIST test images, clean and FGSM at the training eps",
        "resume": measure_resume(FLAGS.workdir), "workers": measure_workers(FLAGS.workdir),
        "machine_note": FLAGS.machine_note, "versions": provenance.versions(art=False),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps({k: record[k] for k in ("resume", "workers")}, indent=1))
    provenance.write(FLAGS.output_json, record, "resume_and_workers.py", started)


if __name__ == "__main__":
    cli.run(main, "resume_and_workers")
