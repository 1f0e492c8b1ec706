r"""The paper's Table 2 on MNIST: randomization (random resize and pad) with and without
triplet regularization, under the paper's attacks and the adaptive ones (EOT) that break it.

    python benchmarks/study.py --study=randomization --output_json=benchmarks/results/table2_randomization_mnist.json

Rows, columns and results: benchmarks/README.md, "Tables 1 and 2".
"""

from studies.thermometer import PGD, RECIPE
from studylib import Attack, Evaluation, Study, Variant

ROWS = (
    ("ori", "Ori", "--preprocessing=none", "--objective=none"),
    ("rand", "Rand", "--preprocessing=random_resize_pad", "--objective=none"),
    ("rand_tr", "Rand+TR", "--preprocessing=random_resize_pad", "--objective=tr", "--attack=pgd", "--attack_steps=5"),
)
ATTACKS = (  # The paper's attacks are crafted on one random draw and judged on another.
    Attack("fgsm", "FGSM", "fgsm", {"eps": 0.3}),
    Attack("pgd", "PGD-40", "pgd", PGD),
    Attack("deepfool", "DeepFool", "deepfool", {"max_iter": 50}),
    Attack("cw", "C&W", "cw", {"binary_search_steps": 4, "max_iterations": 100}),
    Attack("eot_pgd", "EOT-PGD-40", "pgd", PGD, "auto"),
    Attack("eot_apgd_ce", "EOT-APGD-CE", "apgd_ce", {"eps": 0.3, "steps": 100}, "auto", seeded=True),
)

STUDY = Study(
    name="randomization",
    variants=tuple(Variant(name, flags, label) for name, label, *flags in ROWS),
    recipe=RECIPE,
    evaluation=Evaluation(attacks=ATTACKS, examples=1000, batch_size=250, eot_draws=20),
)
