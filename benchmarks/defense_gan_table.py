r"""The paper's Table 3 on MNIST: Defense-GAN with and without triplet
regularization (TR), classifier structures A–D, under FGSM and C&W — and the
adaptive attack that breaks Defense-GAN (BPDA through the projection).

    python benchmarks/defense_gan_table.py \
        --output_json=benchmarks/results/table3_defense_gan_mnist.json
    python benchmarks/defense_gan_table.py --markdown_from=benchmarks/results/table3_defense_gan_mnist.json

Per structure (`mnist_a` .. `mnist_d`, Tramèr et al.'s A–D), two classifiers
are trained with `at2l_tf.experiment.run` on the first
`--train_examples` MNIST training images for `--epochs` epochs (same data order
and seed): `Ori` on clean data (objective `none`), and `TR` with clean CE + the
triplet term on FGSM adversarials (objective `tr`, eps `--eps`). Rows:

* `Ori`: the clean classifier, no defence;
* `DG`: Defense-GAN's projection (`--generator`, L = `--dgan_steps`,
  R = `--dgan_restarts`) in front of the `Ori` classifier;
* `DG+TR`: the projection in front of the `TR` classifier.

Columns (error on the first `--num_examples` test images, as the paper):
clean; FGSM (eps `--eps`) and C&W L2 (one binary-search step, c = 10,
`--cw_steps` Adam steps, learning rate 0.1 — the CleverHans tutorial budget)
crafted on the classifier *behind* the projection, then judged on the whole
defended model (the paper's protocol; for `Ori` they are white-box). For the
structures in `--bpda_models`, on the first `--bpda_examples` images: BPDA-PGD
(eps `--eps`, `--bpda_steps` steps, step 2.5·eps/steps, one random start)
against the whole defended model, with the projection's forward pass and an
identity backward pass (Athalye et al., 2018). The projection's random starts
are drawn again for every evaluation, as at serving time.
"""

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

FLAGS = flags.FLAGS
flags.DEFINE_string("generator", "savedmodels/mnist_generator", "The Defense-GAN generator.")
flags.DEFINE_list("models", ["mnist_a", "mnist_b", "mnist_c", "mnist_d"], "Classifier structures.")
flags.DEFINE_integer("train_examples", 10000, "First N MNIST training images.")
flags.DEFINE_integer("epochs", 2, "Training epochs of every classifier.")
flags.DEFINE_float("eps", 0.3, "L-inf radius of FGSM (training of TR and evaluation) and BPDA-PGD.")
flags.DEFINE_float("lambda2", 0.5, "λ2 of the TR classifiers.")
flags.DEFINE_float("margin", 0.5, "α of the TR classifiers.")
flags.DEFINE_integer("dgan_steps", 25, "L: gradient steps per restart of the projection.")
flags.DEFINE_integer("dgan_restarts", 2, "R: random restarts of the projection.")
flags.DEFINE_integer("num_examples", 500, "First N test images of the FGSM / C&W columns.")
flags.DEFINE_integer("cw_steps", 100, "Adam steps of C&W.")
flags.DEFINE_list("bpda_models", ["mnist_b"], "Structures that also get the BPDA row.")
flags.DEFINE_integer("bpda_examples", 100, "First N test images of the BPDA column.")
flags.DEFINE_integer("bpda_steps", 10, "PGD steps of BPDA.")
flags.DEFINE_integer("seed", 0, "Seed of training and of the projection's starts.")
flags.DEFINE_string("workdir", "runs/defense_gan_table", "Where the classifiers' runs go.")
flags.DEFINE_string("output_json", None, "Where to write the table (atomically, after every structure).")
flags.DEFINE_string("markdown_from", None, "Print the benchmarks/README.md table of this JSON and exit.")
flags.DEFINE_bool("train_only", False, "Train (or reuse) the classifiers and stop (no generator needed).")

def classifier_config(structure, objective):
    cfg = config_lib.ExperimentConfig()
    cfg.model = structure
    cfg.data.max_train_examples = FLAGS.train_examples
    cfg.attack.name = "fgsm"
    cfg.attack.eps = FLAGS.eps
    cfg.train.defense = objective
    cfg.train.epochs = FLAGS.epochs
    cfg.train.lambda2 = FLAGS.lambda2
    cfg.train.margin = FLAGS.margin
    cfg.train.seed = FLAGS.seed
    cfg.eval.attacks = ("fgsm",)
    cfg.eval.num_examples = 0
    cfg.workdir = os.path.join(FLAGS.workdir, f"{structure}_{objective}")
    cfg.export_dir = None
    return cfg.validate()


def evaluate_row(classifier, layer, n, with_bpda):
    """Errors of one row: the classifier alone (`layer=None`) or behind `layer`."""
    from at2l_tf import defenses, evaluation
    from at2l_tf.attacks import bpda

    net = classifier

    def net_fn(z):
        return net(z, training=False)

    if layer is None:
        model_fn = net_fn
    else:
        model = defenses.defended_model(layer, net, (28, 28, 1))

        def model_fn(x):
            return model(x, training=False)

    behind = "classifier behind the projection" if layer is not None else None
    specs = [
        evaluation.AttackSpec("fgsm", {"eps": FLAGS.eps}, model_fn=net_fn, adaptive=behind),
        evaluation.AttackSpec(
            "cw", {"binary_search_steps": 1, "initial_const": 10.0, "max_iterations": FLAGS.cw_steps,
                   "learning_rate": 0.1}, model_fn=net_fn, adaptive=behind,
        ),
    ]
    t0 = time.time()
    report = runlib.evaluate_mnist(model_fn, specs, n, batch_size=100)
    row = {
        "num_examples": n,
        "clean_error": report["clean_error"],
        "fgsm_error": report["attacks"]["fgsm"]["error"],
        "cw_error": report["attacks"]["cw"]["error"],
        "cw_fooled_mean_l2": report["attacks"]["cw"]["fooled_mean_l2"],
        "seconds": round(time.time() - t0, 1),
    }
    if with_bpda and layer is not None:
        m = FLAGS.bpda_examples
        spec = evaluation.AttackSpec(
            "pgd", {"eps": FLAGS.eps, "steps": FLAGS.bpda_steps}, label="bpda_pgd",
            model_fn=bpda.bpda_model_fn(net_fn, layer), adaptive="bpda",
        )
        t0 = time.time()
        rep = runlib.evaluate_mnist(model_fn, [spec], m, batch_size=100)
        row.update(
            bpda_examples=m,
            bpda_clean_error=rep["clean_error"],
            bpda_pgd_error=rep["attacks"]["bpda_pgd"]["error"],
            bpda_seconds=round(time.time() - t0, 1),
        )
    return row


def main(argv):
    if markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    from at2l_tf import defenses, savedmodel

    for structure in FLAGS.models:
        if not structure.startswith("mnist_"):
            raise ConfigError(f"Table 3 uses MNIST structures, received {structure!r}")
    configs = {(s, o): classifier_config(s, o) for s in FLAGS.models for o in ("none", "tr")}
    started = time.time()
    trained = {}
    for (structure, objective), cfg in configs.items():
        print(f"=== {structure} / {objective} ===", file=sys.stderr, flush=True)
        trained[(structure, objective)] = runlib.train(cfg)
    if FLAGS.train_only:
        return
    layer = defenses.make_layer(
        "defense_gan", (28, 28, 1), generator=FLAGS.generator, dgan_steps=FLAGS.dgan_steps,
        dgan_restarts=FLAGS.dgan_restarts, seed=FLAGS.seed,
    )
    table = {}
    for structure in FLAGS.models:
        runs = {
            o: (savedmodel.load_keras_model(os.path.join(configs[(structure, o)].workdir, "model.keras")),
                trained[(structure, o)])
            for o in ("none", "tr")
        }
        with_bpda = structure in FLAGS.bpda_models
        rows = {}
        for name, objective, lay in (("Ori", "none", None), ("DG", "none", layer), ("DG+TR", "tr", layer)):
            rows[name] = evaluate_row(runs[objective][0], lay, FLAGS.num_examples, with_bpda)
            rows[name]["train_seconds"] = runs[objective][1]["train_seconds"]
            print(f"  {structure} {name}: " + ", ".join(
                f"{k} {v:.1%}" for k, v in rows[name].items() if k.endswith("_error")
            ), file=sys.stderr, flush=True)
        table[structure] = rows
        _write(table, started, complete=structure == FLAGS.models[-1])
    print(markdown({"table": table, "settings": _settings()}))


def _settings():
    return {
        "generator": FLAGS.generator, "dgan_steps": FLAGS.dgan_steps,
        "dgan_restarts": FLAGS.dgan_restarts, "train_examples": FLAGS.train_examples,
        "epochs": FLAGS.epochs, "eps": FLAGS.eps, "lambda2": FLAGS.lambda2, "margin": FLAGS.margin,
        "tr_attack": "fgsm", "num_examples": FLAGS.num_examples,
        "cw": f"1 binary-search step, c = 10, {FLAGS.cw_steps} Adam steps, lr 0.1",
        "fgsm_cw_protocol": "crafted on the classifier behind the projection, judged on the defended model",
        "bpda": f"PGD-{FLAGS.bpda_steps}, eps {FLAGS.eps}, step 2.5*eps/steps, 1 restart, identity backward "
                f"through the projection, first {FLAGS.bpda_examples} test images",
        "seed": FLAGS.seed,
    }


def _write(table, started, complete):
    if not FLAGS.output_json:
        return
    atomic_write_json(FLAGS.output_json, {
        "benchmark": "table3_defense_gan",
        "complete": complete,
        "settings": _settings(),
        "table": table,
        **provenance("defense_gan_table.py", started),
    })


def markdown(record):
    """The benchmarks/README.md table: error % per structure and row, BPDA where measured."""
    out = []
    for structure, rows in record["table"].items():
        for name in ("Ori", "DG", "DG+TR"):  # The JSON's keys are sorted.
            r = rows[name]
            bpda = f"{100 * r['bpda_pgd_error']:.1f}" if "bpda_pgd_error" in r else "–"
            out.append([
                structure[-1].upper(), name, f"{100 * r['clean_error']:.1f}",
                f"{100 * r['fgsm_error']:.1f}", f"{100 * r['cw_error']:.1f}", bpda,
            ])
    header = ["model", "row", "clean", "FGSM (classifier)", "C&W (classifier)", "BPDA-PGD (whole)"]
    align = ["---", "---", "---:", "---:", "---:", "---:"]
    return "\n".join(markdown_table(header, out, align))


if __name__ == "__main__":
    cli.run(main, "defense_gan_table")
