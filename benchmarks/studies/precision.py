r"""Is robustness lost when training in mixed precision? float32 vs bfloat16, paired by seed.

    python benchmarks/study.py --study=precision --output_json=benchmarks/results/precision_study_mnist.json

The main command's recipe (`flags/mnist_at2l.flags`: AT²L on `mnist_small`, PGD-5, 3
epochs) with only `--mixed_precision` (`off`, `bfloat16`) and the seed (0, 1, 2) changed:
per seed, the same data order and initial weights for both (drawn in float32 whatever the
policy). Each model is judged in float32 by the run's final check (first 1,000 test images:
FGSM, PGD-40, AutoAttack `fast`; robust = worst case per example). The table gives per
precision mean ± std over seeds and, per seed, the difference bfloat16 − float32 and the
training speed-up. The rule it decided (issue 21): were bfloat16 lower by more than the
seeds' spread, `--mixed_precision=auto` would not choose it for training.
"""

import statistics

from studylib import Study, Variant, run_records

CHOICES = ("off", "bfloat16")
METRICS = ("clean_accuracy", "autoattack_accuracy", "robust_accuracy", "train_seconds")


def _metric(run, m):
    return run["accuracy"].get("autoattack") if m == "autoattack_accuracy" else run.get(m)


def summarize(runs, precisions):
    """Mean ± std per precision, and per-seed paired differences to the first precision."""
    by = {(r["precision_choice"], r["seed"]): r for r in runs}
    out = {"per_precision": {}, "paired_difference": {}}
    for p in precisions:
        rs = [r for r in runs if r["precision_choice"] == p]
        if not rs:
            continue
        row = {"policy": rs[0]["policy"], "seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            values = [_metric(r, m) for r in rs if _metric(r, m) is not None]
            row[m] = {
                "mean": round(statistics.mean(values), 4) if values else None,
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                "values": values,
            }
        out["per_precision"][p] = row
    ref = precisions[0]
    for p in precisions[1:]:
        diffs = {}
        for m in METRICS:
            pairs = [(_metric(by[(p, s)], m), _metric(by[(ref, s)], m)) for (q, s) in by if q == p and (ref, s) in by]
            if m == "train_seconds":
                ratios = [round(b / a, 3) for a, b in pairs if a]
                diffs["speedup"] = {"values": ratios, "mean": round(statistics.mean(ratios), 3) if ratios else None}
                continue
            values = [round(a - b, 4) for a, b in pairs if a is not None and b is not None]
            diffs[m] = {"values": values, "mean": round(statistics.mean(values), 4) if values else None,
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}
        out["paired_difference"][p] = diffs
    return out


def markdown(record):
    # The committed JSON (of the retired precision_study.py) lists `precisions`; the driver's, its variants.
    precisions = record.get("precisions") or [v["name"] for v in record["settings"]["variants"]]
    s = summarize(run_records(record), precisions)
    ref = precisions[0]
    lines = [
        "| precision | seeds | clean | AutoAttack fast | **robust** | training time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(m, scale=100, unit="%"):
        if m["mean"] is None:
            return "–"
        std = f" ± {scale * m['std']:.1f}" if m["std"] is not None else ""
        return f"{scale * m['mean']:.1f}{unit}{std}"

    for p in precisions:
        row = s["per_precision"][p]
        lines.append(
            f"| {row['policy']} (`--mixed_precision={p}`) | {', '.join(map(str, row['seeds']))} | "
            f"{fmt(row['clean_accuracy'])} | {fmt(row['autoattack_accuracy'])} | "
            f"**{fmt(row['robust_accuracy'])}** | {fmt(row['train_seconds'], 1, ' s')} |"
        )
    for p, d in s["paired_difference"].items():
        lines.append(
            f"| {p} − {ref}, per seed | | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['clean_accuracy']['values'])} | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['autoattack_accuracy']['values'])} | "
            f"{', '.join(f'{100 * v:+.1f}' for v in d['robust_accuracy']['values'])} | "
            f"{', '.join(f'{v:.2f}×' for v in d['speedup']['values'])} faster |"
        )
    return "\n".join(lines)


STUDY = Study(
    name="precision",
    variants=tuple(Variant(p, (f"--mixed_precision={p}",), p, {"precision_choice": p}) for p in CHOICES),
    recipe=("--flagfile=flags/mnist_at2l.flags",),
    seeds=(0, 1, 2),
    pairs=(("off", "bfloat16"),),
    markdown=markdown,
)
