r"""Compare defenses (none / at / at2l / tr) trained identically, on real test data.

    python benchmarks/compare_defenses.py                       # MNIST, PGD-5 training, 3 epochs
    python benchmarks/compare_defenses.py --defenses=none,at,at2l --attack=fgsm_rs \
        --output_json=benchmarks/results/compare_defenses_mnist_fgsm_rs.json

It takes every flag of `python -m at2l_tf.train` (same defaults), plus
`--defenses` and `--output_json`. Every defence gets the same model, data
order, training attack, eps, epochs and seed; each is then evaluated on the
first `--eval_examples` test images, clean, under FGSM, under PGD
(`--eval_pgd_steps` steps of `--eval_pgd_step_size`, random start) and under
AutoAttack (`--eval_autoattack_version`, default `fast`: APGD-CE + APGD-T, 100
iterations each), at the training eps; `robust` is the worst case per example
over the three, the figure to compare. Prints one table and writes the JSON.
"""

import os
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf import train as train_command  # Defines every flag of the train command.
from at2l_tf.fileio import atomic_write_json

flags.DEFINE_list("defenses", ["none", "at", "at2l"], "Defences to train and compare.")
flags.DEFINE_string("output_json", None, "Where to write the comparison JSON.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from at2l_tf import experiment

    configs = []
    base_workdir = FLAGS.workdir or "runs/compare_defenses"
    for defense in FLAGS.defenses:
        cfg = train_command.config_from_flags()
        cfg.train.defense = defense
        cfg.eval.attacks = ("fgsm", "pgd", "autoattack")
        cfg.workdir = os.path.join(base_workdir, defense)
        cfg.export_dir = None
        configs.append(cfg.validate())  # All configs are checked before the first run.

    rows = {}
    for cfg in configs:
        res = experiment.run(cfg, verbose=2)
        test = res["test"]
        rows[cfg.train.defense] = {
            "clean_accuracy": round(test["clean_accuracy"], 4),
            "fgsm_accuracy": round(test["attacks"]["fgsm"]["accuracy"], 4),
            "pgd_accuracy": round(test["attacks"]["pgd"]["accuracy"], 4),
            "autoattack_accuracy": round(test["attacks"]["autoattack"]["accuracy"], 4),
            "robust_accuracy": round(test["robust_accuracy"], 4),
            "train_seconds": res["train_seconds"],
        }
    c = configs[0]
    summary = {
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "dataset": c.data.dataset,
        "model": c.model_name,
        "training": {
            "attack": c.attack.name,
            "eps": c.eps,
            "steps": c.attack.steps,
            "step_size": c.attack.step_size,
            "epochs": c.train.epochs,
            "batch_size": c.data.batch_size,
            "lambda1": c.train.lambda1,
            "lambda2": c.train.lambda2,
            "margin": c.train.margin,
            "seed": c.train.seed,
            "max_train_examples": c.data.max_train_examples,
        },
        "evaluation": {
            "split": "test",
            "num_examples": c.eval.num_examples,
            "fgsm": {"eps": c.eps},
            "pgd": {
                "eps": c.eps,
                "steps": c.eval.pgd_steps,
                "step_size": c.eval.pgd_step_size,
                "random_start": True,
            },
            "autoattack": {
                k: v for k, v in test["attacks"]["autoattack"].items()
                if k in ("eps", "version", "steps", "queries", "seed")
            },
            "robust_accuracy": "per example, worst case over fgsm, pgd and autoattack",
        },
        "results": rows,
        "machine": benchlib.machine(),
        "git_commit": benchlib.git_commit(),
        # Training times are wall-clock: other load on the machine inflates them.
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(
        f"\n{c.model_name} on {c.data.dataset}, trained {c.train.epochs} epochs with "
        f"{c.attack.name}-{c.attack.steps} eps={c.eps:.3g}; test accuracy on "
        f"{c.eval.num_examples} images (PGD-{c.eval.pgd_steps}, step {c.eval.pgd_step_size}, "
        f"random start)"
    )
    print(f"{'defense':<8} {'clean':>7} {'FGSM':>7} {'PGD':>7} {'AA':>7} {'robust':>7} {'train s':>8}")
    for d, r in rows.items():
        print(
            f"{d:<8} {r['clean_accuracy']:>7.2%} {r['fgsm_accuracy']:>7.2%} "
            f"{r['pgd_accuracy']:>7.2%} {r['autoattack_accuracy']:>7.2%} "
            f"{r['robust_accuracy']:>7.2%} {r['train_seconds']:>8.0f}"
        )
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)


if __name__ == "__main__":
    cli.run(main, "compare_defenses")
