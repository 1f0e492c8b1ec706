r"""Is robustness lost when training in mixed precision? float32 vs bfloat16, paired by seed.

    python benchmarks/study.py --study=precision --output_json=benchmarks/results/precision_study_mnist.json

The main command's recipe (`flags/mnist_at2l.flags`) with only `--mixed_precision` (`off`,
`bfloat16`) and the seed (0, 1, 2) changed, each model judged in float32 by the run's final
check; per precision mean ± std over seeds, per seed bfloat16 − float32 and the training
speed-up. Results and the rule they decided: benchmarks/README.md, "Mixed precision".
"""

from study_report import by_variant, mean_std, pct, run_records
from studylib import Study, Variant

CHOICES = ("off", "bfloat16")
METRICS = ("clean_accuracy", "autoattack_accuracy", "robust_accuracy")


def _metric(run, m):
    return run["accuracy"].get("autoattack") if m == "autoattack_accuracy" else run.get(m)


def markdown(record):
    # The committed JSON (of the retired precision_study.py) lists `precisions`; the driver's, its variants.
    precisions = record.get("precisions") or [v["name"] for v in record["settings"]["variants"]]
    by = by_variant(run_records(record), key="precision_choice")
    lines = ["| precision | seeds | clean | AutoAttack fast | **robust** | training time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in precisions:
        runs = list(by[p].values())
        cells = [pct(mean_std([_metric(r, m) for r in runs if _metric(r, m) is not None], 4)) for m in METRICS]
        seconds = pct(mean_std([r["train_seconds"] for r in runs], 4), 1, " s")
        lines.append(f"| {runs[0]['policy']} (`--mixed_precision={p}`) | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{cells[0]} | {cells[1]} | **{cells[2]}** | {seconds} |")
    ref = by[precisions[0]]
    for p in precisions[1:]:
        pairs = [(by[p][s], ref[s]) for s in by[p] if s in ref]
        diffs = [", ".join(f"{100 * round(_metric(a, m) - _metric(b, m), 4):+.1f}" for a, b in pairs) for m in METRICS]
        speedup = ", ".join(f"{round(b['train_seconds'] / a['train_seconds'], 3):.2f}×" for a, b in pairs)
        lines.append(f"| {p} − {precisions[0]}, per seed | | {' | '.join(diffs)} | {speedup} faster |")
    return "\n".join(lines)


STUDY = Study(
    name="precision",
    variants=tuple(Variant(p, (f"--mixed_precision={p}",), p, {"precision_choice": p}) for p in CHOICES),
    recipe=("--flagfile=flags/mnist_at2l.flags",),
    seeds=(0, 1, 2),
    pairs=(("off", "bfloat16"),),
    markdown=markdown,
)
