r"""The paper's Table 3 on MNIST: Defense-GAN with and without triplet regularization,
classifier structures A–D, under FGSM and C&W, and the adaptive attack (BPDA) that breaks it.

    python benchmarks/study.py --study=defense_gan --output_json=benchmarks/results/table3_defense_gan_mnist.json

Per structure, two classifiers (variants `<structure>_none`, `<structure>_tr`); the first
gives the rows Ori (alone) and DG (behind the projection), the second DG+TR. Rows,
columns and results: benchmarks/README.md, "Table 3".
"""

import os
import time

from mdtable import markdown_table
from study_judge import evaluate_mnist
from study_report import run_records
from studylib import Evaluation, Study, Variant

STRUCTURES = ("mnist_a", "mnist_b", "mnist_c", "mnist_d")
BPDA_STRUCTURES = ("mnist_b",)
# The projection: the shipped generator, L = 50 steps, R = 4 restarts (the paper's 200 × 10
# costs 1–2 s per image here).
GENERATOR, DGAN_STEPS, DGAN_RESTARTS = "savedmodels/mnist_generator", 50, 4
BPDA_EXAMPLES, BPDA_STEPS, CW_STEPS, EPS = 100, 10, 100, 0.3
_layers = {}


def projection(seed):
    """Defense-GAN's projection layer, one per process and seed: its random starts are drawn
    again for every evaluation, as at serving time."""
    from at2l_tf import defenses

    if seed not in _layers:
        _layers[seed] = defenses.make_layer("defense_gan", (28, 28, 1), generator=GENERATOR, dgan_steps=DGAN_STEPS,
                                            dgan_restarts=DGAN_RESTARTS, seed=seed)
    return _layers[seed]


def evaluate_row(net, layer, n, with_bpda):
    """Errors of one row on the first `n` test images: the classifier `net` alone (`layer=None`)
    or behind `layer`; with `with_bpda`, BPDA-PGD on the first 100 (at most `n`)."""
    from at2l_tf import defenses, evaluation
    from at2l_tf.attacks import bpda

    def net_fn(z):
        return net(z, training=False)

    model = net if layer is None else defenses.defended_model(layer, net, (28, 28, 1))

    def model_fn(x):
        return model(x, training=False)

    behind = "classifier behind the projection" if layer is not None else None
    cw = {"binary_search_steps": 1, "initial_const": 10.0, "max_iterations": CW_STEPS, "learning_rate": 0.1}
    specs = [evaluation.AttackSpec("fgsm", {"eps": EPS}, model_fn=net_fn, adaptive=behind),
             evaluation.AttackSpec("cw", cw, model_fn=net_fn, adaptive=behind)]
    t0 = time.time()
    report = evaluate_mnist(model_fn, specs, n, batch_size=100)
    attacks = report["attacks"]
    row = {"num_examples": n, "clean_error": report["clean_error"], "fgsm_error": attacks["fgsm"]["error"],
           "cw_error": attacks["cw"]["error"], "cw_fooled_mean_l2": attacks["cw"]["fooled_mean_l2"],
           "seconds": round(time.time() - t0, 1)}
    if with_bpda and layer is not None:
        spec = evaluation.AttackSpec("pgd", {"eps": EPS, "steps": BPDA_STEPS}, label="bpda_pgd",
                                     model_fn=bpda.bpda_model_fn(net_fn, layer), adaptive="bpda")
        t0 = time.time()
        m = min(BPDA_EXAMPLES, n)
        rep = evaluate_mnist(model_fn, [spec], m, batch_size=100)
        row.update(bpda_examples=m, bpda_clean_error=rep["clean_error"],
                   bpda_pgd_error=rep["attacks"]["bpda_pgd"]["error"], bpda_seconds=round(time.time() - t0, 1))
    return row


def judge(driver, variant, seed, config, results):
    from at2l_tf import savedmodel

    net = savedmodel.load_keras_model(os.path.join(config.workdir, "model.keras"))
    with_bpda = variant.tags["structure"] in BPDA_STRUCTURES
    n = driver.study.evaluation.examples
    return {"rows": {row: evaluate_row(net, None if row == "Ori" else projection(seed), n, with_bpda)
                     for row in variant.tags["rows"]}}


def markdown(record):
    """Error (%) per structure and row, BPDA where measured (the retired defense_gan_table.py's
    JSON: `table`, by structure)."""
    table = record.get("table")
    if table is None:
        table = {}
        for r in run_records(record):
            table.setdefault(r["structure"], {}).update(r["rows"])
    out = []
    for structure, rows in table.items():
        for name in ("Ori", "DG", "DG+TR"):  # The JSON's keys are sorted.
            r = rows[name]
            bpda = f"{100 * r['bpda_pgd_error']:.1f}" if "bpda_pgd_error" in r else "–"
            out.append([structure[-1].upper(), name, *(f"{100 * r[k]:.1f}" for k in ("clean_error", "fgsm_error",
                                                                                       "cw_error")), bpda])
    header = ["model", "row", "clean", "FGSM (classifier)", "C&W (classifier)", "BPDA-PGD (whole)"]
    return "\n".join(markdown_table(header, out, ["---", "---"] + ["---:"] * 4))


STUDY = Study(
    name="defense_gan",
    variants=tuple(Variant(f"{s}_{o}", (f"--model={s}", f"--objective={o}"), f"{s[-1].upper()} {o}",
                           {"structure": s, "rows": rows})
                   for s in STRUCTURES for o, rows in (("none", ("Ori", "DG")), ("tr", ("DG+TR",)))),
    # Ori on clean data, TR: clean CE + the triplet term (λ2 = 0.5, α = 0.5) on FGSM adversarials.
    recipe=("--max_train_examples=10000", "--epochs=2", "--attack=fgsm", "--eps=0.3", "--lambda2=0.5",
            "--margin=0.5", "--eval_attacks=fgsm", "--eval_examples=0", "--mixed_precision=off"),
    evaluation=Evaluation(judge=judge, examples=500),  # FGSM and C&W on the first 500 test images.
    markdown=markdown,
)
