r"""Compare defenses (none / at / at2l / tr) trained identically, on real test data.

    python benchmarks/compare_defenses.py                       # MNIST, PGD-5 training, 3 epochs
    python benchmarks/compare_defenses.py --defenses=none,at,at2l --epochs=3 \
        --output_json=benchmarks/results/compare_defenses_mnist.json

Every defence gets the same model, data order, training attack, eps, epochs and
seed; each is then evaluated on the first `--eval_examples` test images, clean,
under FGSM and under PGD (`--eval_pgd_steps` steps of `--eval_pgd_step_size`,
random start), at the training eps. Prints one table and writes the JSON.
"""

import os
import platform
import sys
import time

from absl import flags

from at2l_tf import cli
from at2l_tf import config as config_lib
from at2l_tf.fileio import atomic_write_json

flags.DEFINE_list("defenses", ["none", "at", "at2l"], "Defences to train and compare.")
flags.DEFINE_string("dataset", "mnist", "Dataset.")
flags.DEFINE_string("model", None, "Model; default the dataset's default.")
flags.DEFINE_string("attack", "pgd", "Training attack.")
flags.DEFINE_float("eps", None, "L-inf radius (training and evaluation); default per dataset.")
flags.DEFINE_integer("attack_steps", 5, "Training attack steps.")
flags.DEFINE_float("attack_step_size", None, "Training attack step size (default 2.5*eps/steps).")
flags.DEFINE_float("lambda1", 1.0, "λ1.")
flags.DEFINE_float("lambda2", 0.5, "λ2 (at2l, tr).")
flags.DEFINE_float("margin", 0.5, "α.")
flags.DEFINE_integer("epochs", 3, "Epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("max_train_examples", None, "Cap on training examples.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("eval_examples", 1000, "Test images evaluated.")
flags.DEFINE_integer("eval_pgd_steps", 40, "PGD steps of the evaluation.")
flags.DEFINE_float("eval_pgd_step_size", 0.01, "PGD step size of the evaluation.")
flags.DEFINE_string("workdir", "runs/compare_defenses", "Where the runs go.")
flags.DEFINE_string("output_json", None, "Where to write the comparison JSON.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from at2l_tf.training import experiment

    configs = []
    for defense in FLAGS.defenses:
        cfg = config_lib.ExperimentConfig(
            data=config_lib.DataConfig(
                dataset=FLAGS.dataset,
                batch_size=FLAGS.batch_size,
                max_train_examples=FLAGS.max_train_examples,
            ),
            attack=config_lib.AttackConfig(
                FLAGS.attack, FLAGS.eps, FLAGS.attack_steps, FLAGS.attack_step_size
            ),
            train=config_lib.TrainConfig(
                defense=defense,
                lambda1=FLAGS.lambda1,
                lambda2=FLAGS.lambda2,
                margin=FLAGS.margin,
                epochs=FLAGS.epochs,
                seed=FLAGS.seed,
            ),
            eval=config_lib.EvalConfig(
                attacks=("fgsm", "pgd"),
                num_examples=FLAGS.eval_examples,
                pgd_steps=FLAGS.eval_pgd_steps,
                pgd_step_size=FLAGS.eval_pgd_step_size,
            ),
            model=FLAGS.model,
            workdir=os.path.join(FLAGS.workdir, defense),
            export_dir=None,
        )
        configs.append(cfg.validate())  # All configs are checked before the first run.

    rows = {}
    for cfg in configs:
        res = experiment.run(cfg, verbose=2)
        test = res["test"]
        rows[cfg.train.defense] = {
            "clean_accuracy": test["clean_accuracy"],
            "fgsm_accuracy": test["attacks"]["fgsm"]["accuracy"],
            "pgd_accuracy": test["attacks"]["pgd"]["accuracy"],
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
            "num_examples": FLAGS.eval_examples,
            "fgsm": {"eps": c.eps},
            "pgd": {
                "eps": c.eps,
                "steps": FLAGS.eval_pgd_steps,
                "step_size": FLAGS.eval_pgd_step_size,
                "random_start": True,
            },
        },
        "results": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"\n{c.model_name} on {c.data.dataset}, trained {c.train.epochs} epochs with "
        f"{c.attack.name}-{c.attack.steps} eps={c.eps:.3g}; test accuracy on "
        f"{FLAGS.eval_examples} images (PGD-{FLAGS.eval_pgd_steps}, step {FLAGS.eval_pgd_step_size}, "
        f"random start)"
    )
    print(f"{'defense':<8} {'clean':>7} {'FGSM':>7} {'PGD':>7} {'train s':>8}")
    for d, r in rows.items():
        print(
            f"{d:<8} {r['clean_accuracy']:>7.2%} {r['fgsm_accuracy']:>7.2%} "
            f"{r['pgd_accuracy']:>7.2%} {r['train_seconds']:>8.0f}"
        )
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)


if __name__ == "__main__":
    cli.run(main, "compare_defenses")
