r"""What the evaluate command's work directory costs: persistence time over evaluation time.

    python benchmarks/evaluate_persistence.py --output_json=benchmarks/results/evaluate_persistence_cpu.json

Runs `evaluate` in this process on the shipped reference model (first `--num_examples` test
images, `--attacks` at their default budgets), once untimed to trace, then `--rounds` times
with a fresh `--workdir` and without one, alternating. `store_seconds`: the time spent in the
work directory's code (the evaluation's identity with the model's digest, opening the
directory and its writability probe, every unit written and read back), measured by wrapping
it; `store_share` = that over the run's time, the figure (target <= 2%). `wall_s` gives the
runs' times side by side: on a shared machine their difference is mostly noise.
"""

import functools
import os
import shutil
import statistics
import tempfile
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import provenance  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from at2l_tf import evaluate, evaluation  # noqa: E402
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.evaluation import workdir as workdir_lib  # noqa: E402  (evaluate(config) calls its functions)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", "savedmodels/mnist_reference", "The evaluated SavedModel.")
flags.DEFINE_integer("num_examples", 64, "Test images.")
flags.DEFINE_integer("batch_size", 32, "Images per batch (a unit per batch and attack).")
flags.DEFINE_list("attacks", ["fgsm", "pgd", "autoattack"], "Attacks, at their default budgets.")
flags.DEFINE_integer("rounds", 1, "Timed runs with a workdir and without one, each.")
flags.DEFINE_string("output_json", None, "Where to write the measurements.")


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, received rounds={FLAGS.rounds}")
    started = time.time()
    spent = {"seconds": 0.0, "units_written": 0, "units_read": 0}

    def timed(fn, counter=None):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - t
                if counter:
                    spent[counter] += 1

        return wrapper

    store = evaluation.store.ResultStore
    store.save = timed(store.save, "units_written")
    store.load = timed(store.load, "units_read")
    workdir_lib.open_workdir = timed(workdir_lib.open_workdir)
    workdir_lib.evaluation_identity = timed(workdir_lib.evaluation_identity)  # The model's digest.

    root = tempfile.mkdtemp(prefix="persistence-")

    def run(workdir):
        fv = evaluate.define_flags(flags.FlagValues())
        fv(["evaluate", f"--model_dir={FLAGS.model_dir}", f"--num_examples={FLAGS.num_examples}",
            f"--batch_size={FLAGS.batch_size}", f"--attacks={','.join(FLAGS.attacks)}",
            "--verbose=0", f"--workdir={workdir}"])
        before = dict(spent)
        t = time.perf_counter()
        report = evaluate.evaluate_from_flags(fv)
        wall = time.perf_counter() - t
        return wall, {k: spent[k] - before[k] for k in spent}, report

    load_start = os.getloadavg()[0]
    run("")  # Traces every attack: not timed.
    wall = {"with_workdir": [], "without_workdir": []}
    store_s, units = [], []
    for r in range(FLAGS.rounds):
        order = ("with_workdir", "without_workdir") if r % 2 == 0 else ("without_workdir", "with_workdir")
        for mode in order:
            workdir = os.path.join(root, f"w{r}") if mode == "with_workdir" else ""
            seconds, used, _ = run(workdir)
            wall[mode].append(round(seconds, 2))
            if mode == "with_workdir":
                store_s.append(round(used["seconds"], 4))
                units.append(used["units_written"])
            print(f"[persistence] round {r + 1} {mode}: {seconds:.2f} s"
                  + (f", {used['seconds'] * 1000:.1f} ms in the workdir's code" if workdir else ""),
                  flush=True)
    shutil.rmtree(root, ignore_errors=True)
    with_s = wall["with_workdir"]
    result = {
        "benchmark": "evaluate_persistence",
        "settings": {"model_dir": FLAGS.model_dir, "num_examples": FLAGS.num_examples,
                     "batch_size": FLAGS.batch_size, "attacks": FLAGS.attacks,
                     "rounds": FLAGS.rounds, "budgets": "the attacks' defaults"},
        "wall_s": wall,
        "store_seconds": store_s,
        "units_written_per_run": units,
        "store_share": max(s / w for s, w in zip(store_s, with_s)),
        "store_ms_per_unit": round(1000 * statistics.mean(store_s) / max(units[0], 1), 3),
        "target": "store_share <= 0.02",
        "load": {"load_avg_1min_start": round(load_start, 2),
                 "load_avg_1min_end": round(os.getloadavg()[0], 2)},
    }
    result["pass"] = result["store_share"] <= 0.02
    print(f"[persistence] {result['store_share']:.5%} of the evaluation's time in the workdir's "
          f"code ({result['store_ms_per_unit']} ms per unit); runs with/without: {wall}")
    provenance.write(FLAGS.output_json, result, "evaluate_persistence.py", started)


if __name__ == "__main__":
    cli.run(main, "evaluate_persistence")
