r"""Defences compared (none, AT: Eq. 1, AT²L: Eq. 2) trained identically, on real test data.

    python benchmarks/study.py --study=defenses --study_dir=runs/cmp_pgd5 \
        --output_json=benchmarks/results/compare_defenses_mnist_pgd5.json
    python benchmarks/study.py --study=defenses --variants=at,at2l --attack=fgsm_rs --epochs=5 \
        --study_dir=runs/compare_fgsm_rs --output_json=benchmarks/results/compare_defenses_mnist_fgsm_rs.json

The train command's defaults with only `--objective` changed, in float32 as the committed
runs were (they predate `--mixed_precision`), judged by the run's final check. Set-up and
results: benchmarks/README.md, "Defences compared".
"""

from mdtable import markdown_table
from study_report import run_records
from studylib import Study, Variant

LABELS = {"none": "none", "at": "AT (Eq. 1)", "at2l": "AT²L (Eq. 2, λ2 = 0.5, α = 0.5)"}


def rows(record):
    """`(objective, clean, FGSM, PGD, AutoAttack, robust)` per run; the committed JSONs, written
    by the retired compare_defenses.py, hold them under `results` by objective (a run of this
    study written before the rename names its objective `defense`)."""
    if "results" in record:
        out = [(d, *(r[f"{k}_accuracy"] for k in ("clean", "fgsm", "pgd", "autoattack", "robust")))
               for d, r in record["results"].items()]
    else:
        out = [(r.get("objective", r.get("defense")), r["clean_accuracy"],
                *(r["accuracy"][k] for k in ("fgsm", "pgd", "autoattack")), r["robust_accuracy"])
               for r in run_records(record)]
    return sorted(out, key=lambda row: list(LABELS).index(row[0]))  # The JSON's keys are sorted.


def markdown(record):
    return "\n".join(markdown_table(
        ["defence", "clean", "FGSM", "PGD-40", "AutoAttack (fast)", "**robust**"],
        [[LABELS[d], *(f"{100 * v:.1f}%" for v in values[:-1]), f"**{100 * values[-1]:.1f}%**"]
         for d, *values in rows(record)]))


STUDY = Study(
    name="defenses",
    variants=tuple(Variant(d, (f"--objective={d}",), label, {"objective": d}) for d, label in LABELS.items()),
    recipe=("--mixed_precision=off", "--eval_attacks=fgsm,pgd,autoattack"),
    markdown=markdown,
)
