r"""The paper's Figures 1–3 on MNIST: ensemble AT²L (Algorithm 2) against
adversarial training, and triplet regularization alone.

    python benchmarks/ensemble_figures.py \
        --output_json=benchmarks/results/figures/ensemble_figures_mnist.json

Models (all `mnist_small`, the first `--train_examples` MNIST training images,
`--pretrain_epochs` clean epochs then `--epochs` adversarial ones, eps
`--eps`, the same seed and data order; trained with
`at2l_tf.experiment.run`, a finished run is reused):

* `Adv.T`: adversarial training (Eq. 1) with FGSM crafted in every step;
* `AT²L-Gra`, `AT²L-Opt`, `AT²L-Mix`: ensemble AT²L (Algorithm 2) with
  A = {FGSM, LL, I-FGSM, I-LL}, {C&W}, both, and M = {the model being trained,
  a clean-trained `--static_model` (Tramèr et al.'s model B)}, sets regenerated
  every epoch; C&W inside training at its training budget (one constant c = 10,
  10 Adam steps);
* `TR`: clean CE + the triplet term with FGSM adversarials (Fig. 3);
* `AT²L`: Eq. 2 with FGSM crafted in every step (Algorithm 1's per-batch
  limit; Fig. 3);
* `AT²L (Alg. 1, per epoch)`: Eq. 2 with A = {FGSM}, M = {current model},
  regenerated every epoch: the paper's literal Algorithm 1, compared with the
  per-batch `AT²L`.

Curves: after every epoch (checkpoints of the run), the test error on the
first `--curve_examples` test images under white-box FGSM (eps), white-box C&W
L2 (CleverHans tutorial budget: one binary-search step at c = 10, 100 Adam
steps, learning rate 0.1: error = misclassified after the attack; C&W is L2 and
unbounded and fools nearly every example of every model here, so the curve
counts a success only within `--cw_radius` (L2 2.0, MNIST's usual radius; a
clean error counts too), and the unbounded rate and the mean L2 of its
successes are recorded beside it), and FGSM transferred from a
clean-trained `--holdout_model` (model C) that is not in M (Fig. 2).

Under each figure, the same models' accuracy on the first `--eval_examples`
test images under the strongest attacks the project has (the train command's
final check: FGSM, PGD-40 and AutoAttack `fast`, worst case per example),
because FGSM alone overrates FGSM-trained models.

Outputs in `--figures_dir`: `fig{1,2,3}_*.json` (figure dicts of
`at2l_tf.evaluation.plots`) and `.png`, and `--output_json` with every number.
"""

import os
import sys
import time
import warnings

import numpy as np
from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import runlib  # benchmarks/: this script's directory is on sys.path.  # isort: skip
from mdtable import markdown_only, markdown_table  # isort: skip
from provenance import provenance  # isort: skip
from at2l_tf import config as config_lib  # noqa: E402
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 10000, "First N MNIST training images.")
flags.DEFINE_integer("pretrain_epochs", 1, "Clean epochs first (line 1 of Algorithms 1, 2).")
flags.DEFINE_integer("epochs", 5, "Adversarial epochs.")
flags.DEFINE_float("eps", 0.3, "L-inf radius of training and of FGSM evaluation.")
flags.DEFINE_integer("attack_steps", 5, "Iterations of I-FGSM / I-LL in the ensemble.")
flags.DEFINE_float("lambda2", 0.5, "λ2 of the AT²L and TR models.")
flags.DEFINE_float("margin", 0.5, "α of the AT²L and TR models.")
flags.DEFINE_string("static_model", "mnist_b", "Structure of the static model in M.")
flags.DEFINE_string("holdout_model", "mnist_c", "Structure of the transfer source (not in M).")
flags.DEFINE_integer("source_epochs", 2, "Clean training epochs of the static and holdout models.")
flags.DEFINE_integer("curve_examples", 500, "First N test images of the per-epoch curves.")
flags.DEFINE_integer("cw_eval_steps", 100, "Adam steps of the per-epoch C&W.")
flags.DEFINE_float("cw_radius", 2.0, "L2 radius within which a C&W success counts (MNIST's usual 2.0).")
flags.DEFINE_integer("eval_examples", 1000, "First N test images of the final strong check.")
flags.DEFINE_list("models", None, "Models to run (default all).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("workdir", "runs/ensemble_figures", "Where the runs go.")
flags.DEFINE_string("figures_dir", "benchmarks/results/figures", "Where the figure JSON/PNG go.")
flags.DEFINE_string("output_json", None, "Where to write all numbers (atomically).")
flags.DEFINE_string("markdown_from", None, "Print the benchmarks/README.md table of this JSON and exit.")

MODELS = {
    "Adv.T": dict(defense="at", attack="fgsm"),
    "AT²L-Gra": dict(defense="at2l", ensemble="gra", static=True),
    "AT²L-Opt": dict(defense="at2l", ensemble="opt", static=True),
    "AT²L-Mix": dict(defense="at2l", ensemble="mix", static=True),
    "TR": dict(defense="tr", attack="fgsm"),
    "AT²L": dict(defense="at2l", attack="fgsm"),
    "AT²L (Alg. 1, per epoch)": dict(defense="at2l", ensemble="fgsm"),
}
FIGURES = {
    "fig1_whitebox": ("Fig. 1: white-box test error", ["Adv.T", "AT²L-Gra", "AT²L-Opt", "AT²L-Mix"],
                      ["fgsm", "cw"]),
    "fig2_transfer": ("Fig. 2: FGSM transferred from a model not in M", ["Adv.T", "AT²L-Gra", "AT²L-Opt", "AT²L-Mix"],
                      ["transfer_fgsm"]),
    "fig3_tr": ("Fig. 3: FGSM training: AT vs TR vs AT²L", ["Adv.T", "TR", "AT²L", "AT²L (Alg. 1, per epoch)"],
                ["fgsm"]),
}


def _slug(name):
    return "".join(c if c.isalnum() else "_" for c in name.replace("²", "2")).strip("_").lower()


def base_config(workdir, **changes):
    cfg = config_lib.ExperimentConfig()
    cfg.data.max_train_examples = FLAGS.train_examples
    cfg.model = "mnist_small"
    cfg.attack.eps = FLAGS.eps
    cfg.attack.steps = FLAGS.attack_steps
    cfg.train.seed = FLAGS.seed
    cfg.train.lambda2 = FLAGS.lambda2
    cfg.train.margin = FLAGS.margin
    cfg.workdir = workdir
    cfg.export_dir = None
    cfg.eval.num_examples = FLAGS.eval_examples
    for key, value in changes.items():
        section, _, field = key.partition("__")
        setattr(getattr(cfg, section) if field else cfg, field or section, value)
    return cfg


def source_config(structure):
    return base_config(
        os.path.join(FLAGS.workdir, f"source_{structure}"),
        model=structure,
        train__defense="none",
        train__epochs=FLAGS.source_epochs,
        eval__attacks=("fgsm",),
    )


def model_config(name, static_path):
    spec = MODELS[name]
    changes = dict(
        train__defense=spec["defense"],
        train__pretrain_epochs=FLAGS.pretrain_epochs,
        train__epochs=FLAGS.epochs,
        attack__name=spec.get("attack", "fgsm"),
    )
    if spec["defense"] == "at":
        changes["train__lambda2"] = 0.0
    if "ensemble" in spec:
        changes["ensemble__attacks"] = (spec["ensemble"],)
        if spec.get("static"):
            changes["ensemble__static_models"] = (static_path,)
    return base_config(os.path.join(FLAGS.workdir, _slug(name)), **changes)


def test_arrays(n):
    from at2l_tf import data
    from at2l_tf.training import ensemble

    return ensemble.dataset_arrays(data.load("mnist", "test", max_examples=n))


def curve_point(model_fn, x, y, x_transfer, attacks_):
    """Errors of one checkpoint: clean, FGSM, C&W (white-box) and transferred FGSM."""
    import tensorflow as tf

    from at2l_tf.training import ensemble

    def wrong(images):
        preds = np.concatenate([
            np.argmax(model_fn(tf.constant(images[i:i + 250])).numpy(), axis=1)
            for i in range(0, len(images), 250)
        ])
        return preds != y

    clean_wrong = wrong(x)
    out = {"clean": float(np.mean(clean_wrong)), "transfer_fgsm": float(np.mean(wrong(x_transfer)))}
    for name, fn in attacks_.items():
        t0 = time.time()
        x_adv = ensemble.craft_set(ensemble.compile_attack(fn, model_fn), x, y, batch_size=250)
        fooled = wrong(x_adv)
        out[name] = float(np.mean(fooled))
        out[f"{name}_seconds"] = round(time.time() - t0, 1)
        if name == "cw":
            # C&W is unbounded: it fools almost every example of any model. The
            # curve counts a success only within the L2 radius; the
            # unbounded rate and the mean distance of its successes are kept.
            l2 = np.sqrt(np.sum(np.square(x_adv - x).reshape(len(x), -1), axis=1))
            success = fooled & (l2 > 0)
            out["cw_unbounded"] = out["cw"]
            out["cw"] = float(np.mean((fooled & (l2 <= FLAGS.cw_radius)) | clean_wrong))
            out["cw_mean_l2_of_successes"] = float(np.mean(l2[success])) if success.any() else None
    return out


def curves_of(cfg, x, y, x_transfer, attacks_):
    """One curve point per epoch checkpoint of the run in `cfg.workdir`."""
    from at2l_tf import experiment

    model = experiment.build_model(cfg)
    # The checkpoints hold the training optimizer's state too; only weights matter here.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")

    def model_fn(z):
        return model.classifier(z, training=False)

    points = []
    total = cfg.train.pretrain_epochs + cfg.train.epochs
    for epoch in range(1, total + 1):
        path = os.path.join(cfg.workdir, "checkpoints", f"epoch-{epoch:02d}.weights.h5")
        model.load_weights(path)
        point = {"epoch": epoch, **curve_point(model_fn, x, y, x_transfer, attacks_)}
        print(f"  epoch {epoch}: " + ", ".join(
            f"{k} {v:.1%}" for k, v in point.items() if k in ("clean", "fgsm", "cw", "transfer_fgsm")
        ), file=sys.stderr, flush=True)
        points.append(point)
    return points


def figure_dicts(curves, strong, n):
    labels = {"fgsm": f"white-box FGSM (eps {FLAGS.eps:g})", "cw": f"white-box C&W (c = 10, {FLAGS.cw_eval_steps} steps), ||δ||₂ ≤ {FLAGS.cw_radius:g}",
              "transfer_fgsm": f"FGSM (eps {FLAGS.eps:g}) from {FLAGS.holdout_model}, not in M"}
    figs = {}
    for key, (title, models, columns) in FIGURES.items():
        present = [m for m in models if m in curves]
        if not present:
            continue
        figs[key] = {
            "title": f"{title} (MNIST, mnist_small, {FLAGS.train_examples:,} training images; "
                     f"epoch ≤ {FLAGS.pretrain_epochs}: clean pre-training)",
            "xlabel": "epoch",
            "ylabel": "test error",
            "num_examples": n,
            "panels": [
                {"title": labels[c], "series": [
                    {"label": m, "x": [p["epoch"] for p in curves[m]], "y": [p[c] for p in curves[m]]}
                    for m in present]}
                for c in columns
            ],
            "strongest_attack": {m: strong[m] for m in present if m in strong},
        }
    return figs


def main(argv):
    if markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    from at2l_tf import attacks
    from at2l_tf.evaluation import plots
    from at2l_tf.training import ensemble

    names = FLAGS.models or list(MODELS)
    for name in names:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    started = time.time()
    sources = {}
    for structure in (FLAGS.static_model, FLAGS.holdout_model):
        cfg = source_config(structure).validate()
        print(f"=== source model {structure} ===", file=sys.stderr, flush=True)
        runlib.train(cfg)
        sources[structure] = os.path.join(cfg.workdir, "model.keras")
    configs = {n: model_config(n, sources[FLAGS.static_model]).validate() for n in names}

    x, y = test_arrays(FLAGS.curve_examples)
    holdout = ensemble.load_static_models([sources[FLAGS.holdout_model]], x.shape[1:], 10)[0][1]
    fgsm = attacks.make_attack("fgsm", eps=FLAGS.eps)
    x_transfer = ensemble.craft_set(ensemble.compile_attack(fgsm, holdout), x, y, batch_size=250)
    eval_attacks = {
        "fgsm": fgsm,
        "cw": attacks.make_attack("cw", binary_search_steps=1, max_iterations=FLAGS.cw_eval_steps,
                                  initial_const=10.0, learning_rate=0.1),
    }
    record = {"models": {}}
    for i, name in enumerate(names, 1):
        cfg = configs[name]
        print(f"=== model {i}/{len(names)}: {name} ===", file=sys.stderr, flush=True)
        res = runlib.train(cfg)
        t0 = time.time()
        curve = curves_of(cfg, x, y, x_transfer, eval_attacks)
        record["models"][name] = {
            "config": cfg.to_dict(),
            "train_seconds": res["train_seconds"],
            "curve_seconds": round(time.time() - t0, 1),
            "regeneration_seconds": (res.get("ensemble") or {}).get("regeneration_seconds"),
            "curve": curve,
            "strongest": {
                **runlib.accuracies(res["test"]),
                "attacks": "FGSM, PGD-40 (step 0.01), AutoAttack fast (APGD-CE + APGD-T, 100 it.); "
                           "worst case per example",
                "num_examples": FLAGS.eval_examples,
            },
        }
        _write(record, names, started, complete=i == len(names))
    curves = {m: r["curve"] for m, r in record["models"].items()}
    strong = {m: r["strongest"] for m, r in record["models"].items()}
    for key, fig in figure_dicts(curves, strong, FLAGS.curve_examples).items():
        path = os.path.join(FLAGS.figures_dir, f"{key}.json")
        atomic_write_json(path, fig)
        plots.plot_figure_json(path, os.path.join(FLAGS.figures_dir, f"{key}.png"))
        print(f"wrote {path} and its PNG", file=sys.stderr, flush=True)


def markdown(record):
    """The benchmarks/README.md table: last-epoch curve errors and the strong final check,
    per model."""
    rows = []
    for name in record.get("planned_models") or record["models"]:
        r = record["models"][name]
        c, s = r["curve"][-1], r["strongest"]
        acc = s["accuracy"]
        rows.append([
            name, f"{c['fgsm']:.1%}", f"{c['cw']:.1%}", f"{c['transfer_fgsm']:.1%}",
            f"{s['clean_accuracy']:.1%}", f"{acc['fgsm']:.1%}", f"{acc['pgd']:.1%}",
            f"{acc['autoattack']:.1%}", f"**{s['robust_accuracy']:.1%}**",
            f"{r['train_seconds'] / 60:.1f} min",
        ])
    header = ["model", "FGSM error", "C&W error (L2 ≤ 2)", "transferred FGSM error", "clean", "FGSM",
              "PGD-40", "AutoAttack (fast)", "**robust**", "training"]
    return "\n".join(markdown_table(header, rows))


def _write(record, names, started, complete):
    if not FLAGS.output_json:
        return
    atomic_write_json(FLAGS.output_json, {
        "benchmark": "ensemble_figures",
        "complete": complete,
        "planned_models": names,
        "budget": {
            "dataset": "mnist", "model": "mnist_small", "train_examples": FLAGS.train_examples,
            "pretrain_epochs": FLAGS.pretrain_epochs, "epochs": FLAGS.epochs, "eps": FLAGS.eps,
            "ensemble_iterative_steps": FLAGS.attack_steps, "lambda2": FLAGS.lambda2,
            "margin": FLAGS.margin, "static_model": FLAGS.static_model,
            "holdout_model": FLAGS.holdout_model, "source_epochs": FLAGS.source_epochs,
            "curve_examples": FLAGS.curve_examples, "cw_eval": f"1 binary step, c = 10, "
            f"{FLAGS.cw_eval_steps} Adam steps, lr 0.1; error counts successes with L2 <= {FLAGS.cw_radius}", "eval_examples": FLAGS.eval_examples,
            "seed": FLAGS.seed,
        },
        **record,
        **provenance("ensemble_figures.py", started),
    })


if __name__ == "__main__":
    cli.run(main, "ensemble_figures")
