r"""Is robustness lost when training in mixed precision? float32 vs bfloat16, paired by seed.

    python benchmarks/precision_study.py --flagfile=flags/mnist_at2l.flags \
        --output_json=benchmarks/results/precision_study_mnist.json
    python benchmarks/precision_study.py --markdown_from=benchmarks/results/precision_study_mnist.json

Every run is the train command's recipe (the flags given, by default the main
command's: AT²L on `mnist_small`, PGD-5, 3 epochs) with only `--mixed_precision`
(`--precisions`, default `off,bfloat16`) and `--seed` (`--seeds`, default 0,1,2)
changed: per seed, the same data order and the same initial weights for both
precisions (the weights are drawn in float32 whatever the policy). Each model is
judged in float32 by the run's final check on the first `--eval_examples` test
images (default: clean, FGSM, PGD-40 and AutoAttack `fast`; `robust` is their
worst case per example). The JSON gives, per precision, mean and sample std over
seeds of clean, AutoAttack and robust accuracy and of the training time, and,
per seed, the difference mixed − float32 (same seed, same images). A finished
run (same configuration in its workdir) is reused, so the study resumes.

The rule it decides (issue 21): if bfloat16 is lower by more than the seeds'
spread, `--mixed_precision=auto` must not choose it for training.
"""

import os
import statistics
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf import precision as precision_lib  # noqa: E402
from at2l_tf import train as train_command  # noqa: E402  (defines every train flag)
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("precisions", ["off", "bfloat16"], "--mixed_precision values compared; the first is the reference.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("output_json", None, "Where to write the study (atomically, after every run).")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")

METRICS = ("clean_accuracy", "autoattack_accuracy", "robust_accuracy", "train_seconds")


def run_config(choice, seed):
    cfg = train_command.config_from_flags()
    cfg.train.mixed_precision = choice
    cfg.train.seed = seed
    cfg.workdir = os.path.join(FLAGS.workdir or "runs/precision_study", f"{choice}_s{seed}")
    cfg.export_dir = None
    return cfg.validate()


def summarize(runs, precisions):
    """Mean ± std per precision, and per-seed paired differences to the first precision."""
    by = {(r["precision_choice"], r["seed"]): r for r in runs}
    out = {"per_precision": {}, "paired_difference": {}}
    for p in precisions:
        rs = [r for r in runs if r["precision_choice"] == p]
        if not rs:
            continue
        row = {"policy": rs[0]["policy"], "seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            values = [r[m] for r in rs if r.get(m) is not None]
            row[m] = {
                "mean": round(statistics.mean(values), 4) if values else None,
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                "values": values,
            }
        out["per_precision"][p] = row
    ref = precisions[0]
    for p in precisions[1:]:
        diffs = {}
        for m in METRICS:
            pairs = [(by[(p, s)][m], by[(ref, s)][m]) for (q, s) in by if q == p and (ref, s) in by]
            values = [round(a - b, 4) for a, b in pairs if a is not None and b is not None]
            if m == "train_seconds":
                ratios = [round(b / a, 3) for a, b in pairs if a]
                diffs["speedup"] = {"values": ratios,
                                    "mean": round(statistics.mean(ratios), 3) if ratios else None}
                continue
            diffs[m] = {"values": values,
                        "mean": round(statistics.mean(values), 4) if values else None,
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}
        out["paired_difference"][p] = diffs
    return out


def markdown(record):
    s = record["summary"]
    ref = record["precisions"][0]
    lines = [
        "| precision | seeds | clean | AutoAttack fast | **robust** | training time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(m, scale=100, unit="%"):
        if m["mean"] is None:
            return "–"
        std = f" ± {scale * m['std']:.1f}" if m["std"] is not None else ""
        return f"{scale * m['mean']:.1f}{unit}{std}"

    for p in record["precisions"]:  # In the study's order (the JSON's keys are sorted).
        row = s["per_precision"][p]
        lines.append(
            f"| {row['policy']} (`--mixed_precision={p}`) | {', '.join(map(str, row['seeds']))} | "
            f"{fmt(row['clean_accuracy'])} | {fmt(row['autoattack_accuracy'])} | "
            f"**{fmt(row['robust_accuracy'])}** | {fmt(row['train_seconds'], 1, ' s')} |"
        )
    for p, d in s["paired_difference"].items():
        lines.append(
            f"| {p} − {ref}, per seed | | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['clean_accuracy']['values'])} | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['autoattack_accuracy']['values'])} | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['robust_accuracy']['values'])} | "
            f"{', '.join(f'{v:.2f}×' for v in d['speedup']['values'])} faster |"
        )
    return "\n".join(lines)


def main(argv):
    if benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    for p in FLAGS.precisions:
        precision_lib.check_choice(p)
    seeds = []
    for s in FLAGS.seeds:
        if not s.isdigit():
            raise ConfigError(f"seeds must be non-negative integers, received {s!r}")
        seeds.append(int(s))
    from at2l_tf import experiment

    # Seed outermost: a study stopped early still pairs the precisions on the seeds it finished.
    plan = [(p, s) for s in seeds for p in FLAGS.precisions]
    configs = {key: run_config(*key) for key in plan}  # All checked before any training.
    started = time.time()
    runs = []
    for i, key in enumerate(plan, 1):
        cfg = configs[key]
        print(f"=== run {i}/{len(plan)}: {key[0]} seed {key[1]} ===", file=sys.stderr, flush=True)
        t0 = time.time()
        res = benchlib.finished_run(cfg) or experiment.run(cfg, verbose=2)
        test = res["test"]
        runs.append({
            "precision_choice": key[0], "seed": key[1],
            "policy": res.get("precision", {}).get("policy"),
            "clean_accuracy": test["clean_accuracy"],
            "autoattack_accuracy": test["attacks"].get("autoattack", {}).get("accuracy"),
            "robust_accuracy": test["robust_accuracy"],
            "accuracy": {k: v["accuracy"] for k, v in test["attacks"].items()},
            "train_seconds": res["train_seconds"],
            "run_seconds": round(time.time() - t0, 1),
            "workdir": cfg.workdir,
        })
        _write(runs, plan, started, complete=i == len(plan))
    print(markdown({"summary": summarize(runs, FLAGS.precisions), "precisions": FLAGS.precisions}))


def _write(runs, plan, started, complete):
    if not FLAGS.output_json:
        return
    c = train_command.config_from_flags()
    atomic_write_json(FLAGS.output_json, {
        "benchmark": "precision_study",
        "complete": complete,
        "planned_runs": len(plan),
        "precisions": FLAGS.precisions,
        "recipe": {
            "dataset": c.data.dataset, "model": c.model_name, "defense": c.train.defense,
            "epochs": c.train.epochs, "batch_size": c.data.batch_size,
            "max_train_examples": c.data.max_train_examples, "eps": c.eps,
            "training_attack": f"{c.attack.name}-{c.attack.steps}",
            "eval_examples": c.eval.num_examples, "eval_attacks": list(c.eval.attacks),
            "eval_autoattack_version": c.eval.autoattack_version,
            "robust": "per example, worst case over the eval attacks; evaluated in float32",
        },
        "summary": summarize(runs, FLAGS.precisions),
        "runs": runs,
        **benchlib.provenance("precision_study.py", started),
    })


if __name__ == "__main__":
    cli.run(main, "precision_study")
