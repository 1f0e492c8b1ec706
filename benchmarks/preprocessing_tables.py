r"""The paper's Tables 1 and 2 on MNIST: thermometer encoding and randomization,
with and without triplet regularization (TR), under the paper's attacks and
under the adaptive attacks that break them (Athalye, Carlini, Wagner, 2018).

    python benchmarks/preprocessing_tables.py --table=thermometer \
        --output_json=benchmarks/results/table1_thermometer_mnist.json
    python benchmarks/preprocessing_tables.py --table=randomization \
        --output_json=benchmarks/results/table2_randomization_mnist.json

Every row is trained with `at2l_tf.experiment.run` on the first
`--train_examples` MNIST training images for `--epochs` epochs (same model,
data order and seed for all), then evaluated on the first `--num_examples`
test images at eps `--eps` with `at2l_tf.evaluation.robustness_report`. A row
whose run directory already holds a finished run of the same configuration is
not retrained.

Table 1 (thermometer, 16 levels): Ori (no encoding, clean training),
Th.En.(0) (encoding, clean training), Th.En.(k) (encoding, adversarial
training against LS-PGA-k, Eq. 1; k = 1, 7 as the paper), Th.En.+TR(k) (the
same plus the triplet term, Eq. 2). Columns: FGSM and PGD-40 on the whole model
(naive: the code has zero gradient, so these are the *masked* numbers),
LS-PGA-7 (Buckman et al.'s attack on the codes), BPDA-FGSM, BPDA-PGD-40,
BPDA-APGD-CE and BPDA-APGD-DLR (100 iterations), Square (black-box), and the
worst case per example over all of them.

Table 2 (random resize + pad, 28 → [28, 32) → 32): Ori, Rand (layer in front,
clean training), Rand+TR (layer in front, clean CE + triplet term with PGD-5
adversarials, the paper's TR objective). Columns: FGSM, PGD-40, DeepFool and C&W
as the paper (each crafted on one random draw, judged on a fresh one), and
EOT-PGD-40 and EOT-APGD-CE over `--eot_draws` draws; the worst case is over the
L-inf attacks.
"""

import dataclasses
import os
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import runlib  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from mdtable import markdown_only, markdown_table  # isort: skip
from provenance import provenance  # isort: skip
from at2l_tf import config as config_lib  # noqa: E402
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402

TABLES = ("thermometer", "randomization")
FLAGS = flags.FLAGS
flags.DEFINE_string("table", None, "thermometer (Table 1) | randomization (Table 2).")
flags.DEFINE_list("rows", None, "Rows to run (default: all of the table).")
flags.DEFINE_integer("train_examples", 30000, "First N MNIST training images.")
flags.DEFINE_integer("epochs", 2, "Training epochs of every row.")
flags.DEFINE_integer("num_examples", 1000, "First N test images evaluated.")
flags.DEFINE_float("eps", 0.3, "L-inf radius of training and evaluation.")
flags.DEFINE_integer("eot_draws", 20, "EOT draws (Table 2).")
flags.DEFINE_integer("seed", 0, "Seed of training and attacks.")
flags.DEFINE_string("workdir", "runs/preprocessing_tables", "Where the rows' runs go.")
flags.DEFINE_string("output_json", None, "Where to write the table (atomically).")
flags.DEFINE_string("markdown_from", None, "Print the benchmarks/README.md table of this JSON and exit.")

# Table columns: (label in the report, header).
COLUMNS = {
    "thermometer": [
        ("fgsm", "FGSM"), ("pgd", "PGD-40"), ("ls_pga", "LS-PGA-7"),
        ("bpda_fgsm", "BPDA-FGSM"), ("bpda_pgd", "BPDA-PGD-40"),
        ("bpda_apgd_ce", "BPDA-APGD-CE"), ("bpda_apgd_dlr", "BPDA-APGD-DLR"),
        ("square", "Square"),
    ],
    "randomization": [
        ("fgsm", "FGSM"), ("pgd", "PGD-40"), ("deepfool", "DeepFool"), ("cw", "C&W"),
        ("eot_pgd", "EOT-PGD-40"), ("eot_apgd_ce", "EOT-APGD-CE"),
    ],
}

# Paper's rows (its own numbers are CIFAR-10 / ImageNet: see benchmarks/README.md).
THERMOMETER_ROWS = {
    "Ori": dict(preprocessing="none", defense="none"),
    "Th.En.(0)": dict(preprocessing="thermometer", defense="none"),
    "Th.En.(1)": dict(preprocessing="thermometer", defense="at", attack="ls_pga", steps=1),
    "Th.En.(7)": dict(preprocessing="thermometer", defense="at", attack="ls_pga", steps=7),
    "Th.En.+TR(1)": dict(preprocessing="thermometer", defense="at2l", attack="ls_pga", steps=1),
    "Th.En.+TR(7)": dict(preprocessing="thermometer", defense="at2l", attack="ls_pga", steps=7),
}
RANDOMIZATION_ROWS = {
    "Ori": dict(preprocessing="none", defense="none"),
    "Rand": dict(preprocessing="random_resize_pad", defense="none"),
    "Rand+TR": dict(preprocessing="random_resize_pad", defense="tr", attack="pgd", steps=5),
}


def row_config(name, spec, f):
    """The `ExperimentConfig` of one row (validated)."""
    slug = name.replace("(", "_").replace(")", "").replace("+", "_").replace(".", "")
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(max_train_examples=f.train_examples),
        attack=config_lib.AttackConfig(
            name=spec.get("attack", "pgd"), eps=f.eps, steps=spec.get("steps", 5)
        ),
        train=config_lib.TrainConfig(defense=spec["defense"], epochs=f.epochs, seed=f.seed),
        eval=config_lib.EvalConfig(num_examples=0),  # Evaluated here, with the table's attacks.
        preprocessing=config_lib.PreprocessingConfig(name=spec["preprocessing"]),
        workdir=os.path.join(f.workdir, slug),
        export_dir=None,
    ).validate()


def attack_specs(table, layer, net_fn, model_fn, f):
    """`(specs, notes)`: the table's attacks, naive and adaptive, for one model."""
    from at2l_tf.evaluation import AttackSpec, adaptive

    eps, seed = f.eps, f.seed
    pgd = {"eps": eps, "steps": 40}
    apgd = {"eps": eps, "steps": 100, "seed": seed}
    if table == "thermometer":
        naive = [AttackSpec("fgsm", {"eps": eps}), AttackSpec("pgd", pgd)]
        if layer is not None:
            naive.append(AttackSpec("ls_pga", {"eps": eps, "steps": 7}))
        strong = [
            AttackSpec("fgsm", {"eps": eps}, label="bpda_fgsm"),
            AttackSpec("pgd", pgd, label="bpda_pgd"),
            AttackSpec("apgd_ce", apgd, label="bpda_apgd_ce"),
            AttackSpec("apgd_dlr", apgd, label="bpda_apgd_dlr"),
        ]
        black = [AttackSpec("square", {"eps": eps, "queries": 1000, "seed": seed})]
    else:
        naive = [
            AttackSpec("fgsm", {"eps": eps}),
            AttackSpec("pgd", pgd),
            AttackSpec("deepfool", {"max_iter": 50}),
            AttackSpec("cw", {"binary_search_steps": 4, "max_iterations": 100}),
        ]
        strong = [
            AttackSpec("pgd", pgd, label="eot_pgd"),
            AttackSpec("apgd_ce", apgd, label="eot_apgd_ce"),
        ]
        black = []
    common = dict(layer=layer, net_fn=net_fn, model_fn=model_fn, eot_draws=f.eot_draws)
    specs = adaptive.adapt(naive, mode="none", **common)
    specs += adaptive.adapt(strong, mode="auto", **common) + black
    return specs


def run_row(table, name, cfg, f):
    from at2l_tf import savedmodel

    model_path = os.path.join(cfg.workdir, "model.keras")
    trained = runlib.train(cfg)
    clf = savedmodel.load_classifier(model_path)
    report = runlib.evaluate_mnist(
        clf.model_fn,
        attack_specs(table, clf.preprocessing, clf.net_fn, clf.model_fn, f),
        f.num_examples,
        batch_size=250,
        verbose=1,
        seed=f.seed,
    )
    hist = trained["history"]
    return {
        "preprocessing": cfg.preprocessing.name,
        "defense": cfg.train.defense,
        "training_attack": None if cfg.train.defense == "none" else
        f"{cfg.attack.name}-{cfg.attack.steps}",
        "train_seconds": trained["train_seconds"],
        "final_train_metrics": {k: round(v[-1], 4) for k, v in hist.items()},
        "report": report,
    }


def main(argv):
    if markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    if FLAGS.table not in TABLES:
        raise ConfigError(f"--table must be one of {', '.join(TABLES)}, received {FLAGS.table!r}")
    rows = THERMOMETER_ROWS if FLAGS.table == "thermometer" else RANDOMIZATION_ROWS
    names = FLAGS.rows or list(rows)
    for n in names:
        if n not in rows:
            raise ConfigError(f"unknown row {n!r}; rows of this table: {', '.join(rows)}")
    if FLAGS.num_examples < 1 or FLAGS.train_examples < 128 or FLAGS.epochs < 1:
        raise ConfigError("num_examples >= 1, train_examples >= 128 and epochs >= 1 are required")
    configs = {n: row_config(n, rows[n], FLAGS) for n in names}  # All checked first.
    started = time.time()
    out = {}
    for n in names:
        print(f"=== {n} ===", file=sys.stderr, flush=True)
        out[n] = run_row(FLAGS.table, n, configs[n], FLAGS)
        _print_row(n, out[n])
        # Written after every row, so that a long run shows its progress.
        _write(configs, names, out, started, complete=len(out) == len(names))


def _write(configs, names, out, started, complete):
    record = {
        "benchmark": f"preprocessing_tables/{FLAGS.table}",
        "complete": complete,
        "dataset": "mnist",
        "model": "mnist_small",
        "settings": {
            "train_examples": FLAGS.train_examples, "epochs": FLAGS.epochs, "eps": FLAGS.eps,
            "num_examples": FLAGS.num_examples, "eot_draws": FLAGS.eot_draws, "seed": FLAGS.seed,
            "rows": {n: dataclasses.asdict(configs[n].preprocessing) | {
                "defense": configs[n].train.defense, "attack": configs[n].attack.name,
                "attack_steps": configs[n].attack.steps} for n in names},
            "test_images": "first num_examples of the MNIST test split",
        },
        "rows": out,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        **provenance("preprocessing_tables.py", started),
    }
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, record)
        print(f"wrote {FLAGS.output_json}", file=sys.stderr)


def markdown(record):
    """The benchmarks/README.md table of a results JSON: accuracy (%) per row and attack."""
    table = record["benchmark"].split("/")[1]
    cols = COLUMNS[table]
    rows = []
    for name, row in record["rows"].items():
        rep = row["report"]
        cells = [f"{rep['clean_accuracy']:.1%}"]
        for label, _ in cols:
            entry = rep["attacks"].get(label)
            cells.append("–" if entry is None else f"{entry['accuracy']:.1%}")
        worst = rep["robust_accuracy"]
        cells.append("–" if worst is None else f"**{worst:.1%}**")
        rows.append([name, *cells])
    header = ["row", "clean", *(h for _, h in cols), "**worst case**"]
    return "\n".join(markdown_table(header, rows))


def _print_row(name, row):
    rep = row["report"]
    cells = [f"clean {rep['clean_accuracy']:.1%}"]
    cells += [f"{k} {v['accuracy']:.1%}" for k, v in rep["attacks"].items()]
    worst = rep["robust_accuracy"]
    cells.append(f"worst {worst:.1%}" if worst is not None else "worst -")
    print(f"{name}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    cli.run(main, "preprocessing_tables")
