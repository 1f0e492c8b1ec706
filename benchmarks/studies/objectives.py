r"""AT vs TRADES vs MART, each without a triplet term, with the paper's and with a TLA-style one.

    python benchmarks/study.py --study=objectives --output_json=benchmarks/results/compare_objectives_mnist.json
    python benchmarks/study.py --study=objectives --variants=mart_none --pretrain_epochs=1 \
        --output_json=benchmarks/results/compare_objectives_mnist_mart_pretrain.json

The recipe of `flags/mnist_triplet_study.flags` at 2 epochs with only the objective and its
triplet term changed, one seed, judged by the run's final check: enough to choose a recipe;
the `triplet` study answers whether a term helps. Set-up and results: benchmarks/README.md,
"Objectives compared".
"""

from mdtable import markdown_table
from study_report import run_records
from studylib import Study, Variant

OBJECTIVES = {"at": ("--objective=at",), "trades": ("--objective=trades",), "mart": ("--objective=mart",)}
TRIPLETS = {
    "none": (),
    "paper": ("--lambda2=0.5", "--margin=0.5", "--triplet_features=logits", "--triplet_distance=linf",
              "--triplet_negative=random"),
    "tla": ("--lambda2=0.5", "--margin=0.05", "--triplet_features=embedding", "--triplet_distance=cosine",
            "--triplet_negative=hardest"),
}
LABELS = {"at": "AT", "trades": "TRADES", "mart": "MART", "none": "–", "paper": "paper (AT²L)",
          "tla": "TLA-style"}


def markdown(record):
    rows = []
    for r in run_records(record):
        a = r["accuracy"]
        rows.append([LABELS[r["objective"]], LABELS[r["triplet"]], f"{100 * r['clean_accuracy']:.1f}%",
                     f"{100 * a['pgd']:.1f}%", f"{100 * a['autoattack']:.1f}%",
                     f"**{100 * r['robust_accuracy']:.1f}%**", f"{r['train_seconds'] / 60:.1f}"])
    return "\n".join(markdown_table(
        ["objective", "triplet term", "clean", "PGD-40", "AutoAttack fast", "**robust**", "train min"], rows))


STUDY = Study(
    name="objectives",
    variants=tuple(Variant(f"{o}_{t}", of + tf, f"{LABELS[o]} + {LABELS[t]}", {"objective": o, "triplet": t})
                   for o, of in OBJECTIVES.items() for t, tf in TRIPLETS.items()),
    recipe=("--flagfile=flags/mnist_triplet_study.flags", "--epochs=2"),
    markdown=markdown,
)
