r"""The paper's Figures 1–3 on MNIST: ensemble AT²L (Algorithm 2) against adversarial
training, and triplet regularization alone.

    python benchmarks/study.py --study=ensemble --output_json=benchmarks/results/figures/ensemble_figures_mnist.json
    python benchmarks/study.py --study=ensemble --plot_from=benchmarks/results/figures/ensemble_figures_mnist.json

The two clean-trained source models come first (`mnist_b`, static in M; `mnist_c`, the
transfer source, not in M). After each model's training, every epoch's checkpoint is
judged on the first 500 test images: white-box FGSM, white-box C&W (a success counts
within L2 ≤ 2; the unbounded rate and the mean L2 of its successes are kept beside it) and
FGSM transferred from `mnist_c`; the table adds the run's own final check. The figures
(`fig{1,2,3}_*.json` and `.png`) go beside the JSON. Models and results:
benchmarks/README.md, "Figures 1–3".
"""

import os
import time
import warnings

import numpy as np

from mdtable import markdown_table
from study_judge import accuracies
from study_report import run_records
from studylib import ROOT, Evaluation, Study, Variant, note

EPS, CW_STEPS, CW_RADIUS = 0.3, 100, 2.0
STATIC, HOLDOUT = "source_mnist_b", "source_mnist_c"
SOURCE = ("--objective=none", "--epochs=2", "--pretrain_epochs=0", "--eval_attacks=fgsm")
STATIC_MODEL = f"--static_models={{run:{STATIC}}}/model.keras"
MODELS = (  # (variant, label, flags): after 1 clean epoch, 5 adversarial ones.
    ("adv_t", "Adv.T", ("--objective=at", "--lambda2=0")),
    ("at2l_gra", "AT²L-Gra", ("--objective=at2l", "--ensemble_attacks=gra", STATIC_MODEL)),
    ("at2l_opt", "AT²L-Opt", ("--objective=at2l", "--ensemble_attacks=opt", STATIC_MODEL)),
    ("at2l_mix", "AT²L-Mix", ("--objective=at2l", "--ensemble_attacks=mix", STATIC_MODEL)),
    ("tr", "TR", ("--objective=tr",)),
    ("at2l", "AT²L", ("--objective=at2l",)),
    ("at2l_alg1", "AT²L (Alg. 1, per epoch)", ("--objective=at2l", "--ensemble_attacks=fgsm")),
)
FIGURES = {
    "fig1_whitebox": ("Fig. 1: white-box test error", ["Adv.T", "AT²L-Gra", "AT²L-Opt", "AT²L-Mix"], ["fgsm", "cw"]),
    "fig2_transfer": ("Fig. 2: FGSM transferred from a model not in M",
                      ["Adv.T", "AT²L-Gra", "AT²L-Opt", "AT²L-Mix"], ["transfer_fgsm"]),
    "fig3_tr": ("Fig. 3: FGSM training: AT vs TR vs AT²L", ["Adv.T", "TR", "AT²L", "AT²L (Alg. 1, per epoch)"],
                ["fgsm"]),
}
_curve_sets = {}


def curve_set(holdout_path, n):
    """`(x, y, x_transfer, attacks)`: the curves' test images, their FGSM adversarials crafted on
    the holdout model, and the white-box attacks."""
    from at2l_tf import attacks, data
    from at2l_tf.training import ensemble

    if (holdout_path, n) not in _curve_sets:
        x, y = ensemble.dataset_arrays(data.load("mnist", "test", max_examples=n))
        holdout = ensemble.load_static_models([holdout_path], x.shape[1:], 10)[0][1]
        fgsm = attacks.make_attack("fgsm", eps=EPS)
        x_transfer = ensemble.craft_set(ensemble.compile_attack(fgsm, holdout), x, y, batch_size=250)
        cw = attacks.make_attack("cw", binary_search_steps=1, max_iterations=CW_STEPS, initial_const=10.0,
                                 learning_rate=0.1)
        _curve_sets[holdout_path, n] = (x, y, x_transfer, {"fgsm": fgsm, "cw": cw})
    return _curve_sets[holdout_path, n]


def curve_point(model_fn, x, y, x_transfer, attacks_):
    """Errors of one checkpoint: clean, FGSM, C&W (white-box) and transferred FGSM."""
    import tensorflow as tf

    from at2l_tf.training import ensemble

    def wrong(images):
        return np.concatenate([np.argmax(model_fn(tf.constant(images[i:i + 250])).numpy(), axis=1)
                               for i in range(0, len(images), 250)]) != y

    clean_wrong = wrong(x)
    out = {"clean": float(np.mean(clean_wrong)), "transfer_fgsm": float(np.mean(wrong(x_transfer)))}
    for name, fn in attacks_.items():
        t0 = time.time()
        x_adv = ensemble.craft_set(ensemble.compile_attack(fn, model_fn), x, y, batch_size=250)
        fooled = wrong(x_adv)
        out[name] = float(np.mean(fooled))
        out[f"{name}_seconds"] = round(time.time() - t0, 1)
        if name == "cw":  # Unbounded, C&W fools almost every example: a success counts within the radius.
            l2 = np.sqrt(np.sum(np.square(x_adv - x).reshape(len(x), -1), axis=1))
            success = fooled & (l2 > 0)
            out["cw_unbounded"] = out["cw"]
            out["cw"] = float(np.mean((fooled & (l2 <= CW_RADIUS)) | clean_wrong))
            out["cw_mean_l2_of_successes"] = float(np.mean(l2[success])) if success.any() else None
    return out


def judge(driver, variant, seed, config, results):
    """A source model: its final check. A figure model: its curve over the epochs, and its final check."""
    from at2l_tf import experiment

    if variant.name in (STATIC, HOLDOUT):
        return accuracies(results["test"])
    holdout = os.path.join(ROOT, driver.workdir(HOLDOUT, seed), "model.keras")
    x, y, x_transfer, attacks_ = curve_set(holdout, driver.study.evaluation.examples)
    model = experiment.build_model(config)
    # The checkpoints hold the training optimizer's state too; only weights matter here.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")

    def model_fn(z):
        return model.classifier(z, training=False)

    t0, curve = time.time(), []
    for epoch in range(1, config.train.pretrain_epochs + config.train.epochs + 1):
        model.load_weights(os.path.join(config.workdir, "checkpoints", f"epoch-{epoch:02d}.weights.h5"))
        curve.append({"epoch": epoch, **curve_point(model_fn, x, y, x_transfer, attacks_)})
        note(f"  epoch {epoch}: " + ", ".join(f"{k} {curve[-1][k]:.1%}"
                                              for k in ("clean", "fgsm", "cw", "transfer_fgsm")))
    return {"curve": curve, "curve_seconds": round(time.time() - t0, 1),
            "regeneration_seconds": (results.get("ensemble") or {}).get("regeneration_seconds"),
            "strongest": {**accuracies(results["test"]), "num_examples": config.eval.num_examples,
                          "attacks": "FGSM, PGD-40 (step 0.01), AutoAttack fast (APGD-CE + APGD-T, 100 it.); "
                                     "worst case per example"}}


def models(record):
    """`{label: run}` of the figure models (the retired ensemble_figures.py's JSON: `models`)."""
    if "models" in record:
        return {name: record["models"][name] for name in record.get("planned_models") or record["models"]}
    labels = record["settings"]["labels"]
    return {labels[r["variant"]]: r for r in run_records(record) if "curve" in r}


def markdown(record):
    rows = []
    for name, r in models(record).items():
        c, s = r["curve"][-1], r["strongest"]
        rows.append([name, *(f"{c[k]:.1%}" for k in ("fgsm", "cw", "transfer_fgsm")), f"{s['clean_accuracy']:.1%}",
                     *(f"{s['accuracy'][k]:.1%}" for k in ("fgsm", "pgd", "autoattack")),
                     f"**{s['robust_accuracy']:.1%}**", f"{r['train_seconds'] / 60:.1f} min"])
    header = ["model", "FGSM error", "C&W error (L2 ≤ 2)", "transferred FGSM error", "clean", "FGSM", "PGD-40",
              "AutoAttack (fast)", "**robust**", "training"]
    return "\n".join(markdown_table(header, rows))


def plot(record, png):
    """Figures 1–3 (`at2l_tf.evaluation.plots` figure JSONs and their PNGs) in `png`'s directory."""
    from at2l_tf.evaluation import plots
    from at2l_tf.fileio import atomic_write_json

    runs, out = models(record), os.path.dirname(png)
    n = record["budget"]["curve_examples"] if "budget" in record else record["settings"]["evaluation"]["examples"]
    labels = {"fgsm": f"white-box FGSM (eps {EPS:g})", "cw": f"white-box C&W (c = 10, {CW_STEPS} steps), "
              f"||δ||₂ ≤ {CW_RADIUS:g}", "transfer_fgsm": f"FGSM (eps {EPS:g}) from mnist_c, not in M"}
    for key, (title, names, columns) in FIGURES.items():
        present = [m for m in names if m in runs]
        if not present:
            continue
        path = os.path.join(out, f"{key}.json")
        atomic_write_json(path, {
            "title": f"{title} (MNIST, mnist_small, 10,000 training images; epoch ≤ 1: clean pre-training)",
            "xlabel": "epoch", "ylabel": "test error", "num_examples": n,
            "panels": [{"title": labels[c], "series": [
                {"label": m, "x": [p["epoch"] for p in runs[m]["curve"]], "y": [p[c] for p in runs[m]["curve"]]}
                for m in present]} for c in columns],
            "strongest_attack": {m: runs[m]["strongest"] for m in present},
        })
        plots.plot_figure_json(path, os.path.join(out, f"{key}.png"))
    return out


STUDY = Study(
    name="ensemble",
    variants=(Variant(STATIC, ("--model=mnist_b", *SOURCE), "mnist_b (static, in M)"),
              Variant(HOLDOUT, ("--model=mnist_c", *SOURCE), "mnist_c (transfer source)"),
              *(Variant(name, ("--attack=fgsm", *flags), label, needs=(HOLDOUT,)) for name, label, flags in MODELS)),
    # mnist_small, the first 10,000 training images, 1 clean epoch then 5 adversarial ones (FGSM
    # crafted in every step; the ensembles' I-FGSM and I-LL: 5 steps), λ2 = 0.5, α = 0.5.
    recipe=("--model=mnist_small", "--max_train_examples=10000", "--pretrain_epochs=1", "--epochs=5", "--eps=0.3",
            "--attack_steps=5", "--lambda2=0.5", "--margin=0.5", "--eval_examples=1000", "--mixed_precision=off"),
    evaluation=Evaluation(judge=judge, examples=500),  # The curves' first 500 test images.
    markdown=markdown,
    plot=plot,
)
