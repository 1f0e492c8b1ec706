r"""The paper's Table 1 on MNIST: thermometer encoding with and without triplet regularization,
under the paper's attacks and the adaptive ones (BPDA) that break it.

    python benchmarks/study.py --study=thermometer --output_json=benchmarks/results/table1_thermometer_mnist.json

Rows, columns and results: benchmarks/README.md, "Tables 1 and 2".
"""

from studylib import Attack, Evaluation, Study, Variant

# Every row: mnist_small, the first 30,000 training images, 2 epochs, float32 (as the committed run).
RECIPE = ("--max_train_examples=30000", "--epochs=2", "--eps=0.3", "--eval_examples=0", "--mixed_precision=off")
ROWS = (  # (variant, label, *its train flags)
    ("ori", "Ori", "--preprocessing=none", "--objective=none"),
    ("then0", "Th.En.(0)", "--preprocessing=thermometer", "--objective=none"),
    ("then1", "Th.En.(1)", "--preprocessing=thermometer", "--objective=at", "--attack=ls_pga", "--attack_steps=1"),
    ("then7", "Th.En.(7)", "--preprocessing=thermometer", "--objective=at", "--attack=ls_pga", "--attack_steps=7"),
    ("then_tr1", "Th.En.+TR(1)", "--preprocessing=thermometer", "--objective=at2l", "--attack=ls_pga",
     "--attack_steps=1"),
    ("then_tr7", "Th.En.+TR(7)", "--preprocessing=thermometer", "--objective=at2l", "--attack=ls_pga",
     "--attack_steps=7"),
)
PGD, APGD = {"eps": 0.3, "steps": 40}, {"eps": 0.3, "steps": 100}
ATTACKS = (
    Attack("fgsm", "FGSM", "fgsm", {"eps": 0.3}),
    Attack("pgd", "PGD-40", "pgd", PGD),
    Attack("ls_pga", "LS-PGA-7", "ls_pga", {"eps": 0.3, "steps": 7}, layer_only=True),
    Attack("bpda_fgsm", "BPDA-FGSM", "fgsm", {"eps": 0.3}, "auto"),
    Attack("bpda_pgd", "BPDA-PGD-40", "pgd", PGD, "auto"),
    Attack("bpda_apgd_ce", "BPDA-APGD-CE", "apgd_ce", APGD, "auto", seeded=True),
    Attack("bpda_apgd_dlr", "BPDA-APGD-DLR", "apgd_dlr", APGD, "auto", seeded=True),
    Attack("square", "Square", "square", {"eps": 0.3, "queries": 1000}, seeded=True),
)

STUDY = Study(
    name="thermometer",
    variants=tuple(Variant(name, flags, label) for name, label, *flags in ROWS),
    recipe=RECIPE,
    evaluation=Evaluation(attacks=ATTACKS, examples=1000, batch_size=250, eot_draws=20),
)
