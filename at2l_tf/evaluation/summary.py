"""The figures of a robustness report, from its units; and its table.

`summarize` computes every figure from the units alone (one per batch and
attack, and one per batch for the clean pass; `evaluation.report`), in batch
order, so that a resumed or multi-worker evaluation gives the same figures as
one uninterrupted process. `format_report` prints the report as a table.

**Worst case.** `robust_accuracy` is the share of examples classified correctly
under *every* L-inf attack that was run (per example, not the minimum of the
per-attack accuracies, which overstates it when attacks fool different
examples). It is the figure to quote; the per-attack rows show which attack did
the damage. L2 attacks (C&W, DeepFool) are minimal-norm, not eps-bounded, and
do not enter it. `black_box_only_fooled` counts the examples that survived every
white-box L-inf attack but fell to a black-box one (Square): above 0, the
gradients the white-box attacks followed were misleading (gradient masking).
AutoAttack, which runs Square itself, is on neither side of that comparison.
"""

import numpy as np

from at2l_tf.evaluation.store import unit_key


def summarize(runs, units, sizes, sources, per_example):
    """The report from every batch's units, in batch order.

    Args:
        runs: the report's attack runs (label, spec, source, registry entry,
            the attack function and the model it searched on), in order.
        units: `{(batch, unit_key(...)): unit}` of every batch, clean and per attack.
        sizes: the number of examples of each batch.
        sources: the transfer sources, or `None` for white-box.
        per_example: also return `"per_example"`, each example right or wrong.

    Returns:
        The report dict (see `evaluation.robustness_report`).
    """
    order = range(len(sizes))
    clean = np.concatenate([np.array(units[(b, unit_key())]["correct"], bool) for b in order])
    n = len(clean)
    clean_wrong = int(n - clean.sum())
    report = {
        "num_examples": n,
        "clean_error": clean_wrong / n,
        "clean_accuracy": (n - clean_wrong) / n,
        "attacks": {},
    }
    correct = {"clean": clean}
    for i, r in enumerate(runs):
        us = [units[(b, unit_key(i))] for b in order]
        right = np.concatenate([np.array(u["correct"], bool) for u in us])
        linf = np.concatenate([np.asarray(u["linf"], np.float64) for u in us])
        l2 = np.concatenate([np.asarray(u["l2"], np.float64) for u in us])
        flipped = clean & ~right
        fooled = int(flipped.sum())
        wrong = int(n - right.sum())
        entry = {
            "attack": r.spec.name,
            "norm": r.entry.norm,
            "error": wrong / n,
            "accuracy": (n - wrong) / n,
            "mean_linf": float(linf.sum() / n),
            "mean_l2": float(l2.sum() / n),
            "fooled": fooled / n,
            "fooled_mean_linf": float(linf[flipped].sum() / fooled) if fooled else None,
            "fooled_mean_l2": float(l2[flipped].sum() / fooled) if fooled else None,
            "source": "white-box" if sources is None else r.source,
            "seconds": round(sum(float(u["seconds"]) for u in us), 2),
        }
        if "on_stage" in r.entry.params:
            entry["stages"] = _stages(us)
        if all("search" in u for u in us):
            entry["search"] = {
                "precision": getattr(r.model, "name", None),
                "rejected": sum(int(u["search"]["rejected"]) for u in us),
                "fooled_search_only": None if r.entry.inputs != "images" else sum(
                    int(u["search"]["fooled_search_only"]) for u in us),
            }
        if r.spec.adaptive and sources is None:
            entry["adaptive"] = r.spec.adaptive
        entry.update({k: jsonable(v) for k, v in r.attack_fn.bound_params.items()})
        report["attacks"][r.label] = entry
        correct[r.label] = right
    linf_labels = [r.label for r in runs if r.entry.norm == "linf"]
    worst = np.logical_and.reduce([correct["clean"]] + [correct[k] for k in linf_labels])
    report["robust_accuracy"] = float(worst.mean()) if linf_labels else None
    report["robust_accuracy_attacks"] = linf_labels
    kind = {r.label: r.entry for r in runs}
    black = [k for k in linf_labels if kind[k].black_box]
    # AutoAttack runs Square itself: it is neither side of the comparison.
    white = [k for k in linf_labels if not kind[k].black_box and not kind[k].composite]
    report["black_box_only_fooled"] = None
    if black and white and sources is None:
        survived = np.logical_and.reduce([correct[k] for k in white])
        fell = np.logical_or.reduce([~correct[k] for k in black])
        report["black_box_only_fooled"] = int(np.sum(survived & fell))
    if per_example:
        report["per_example"] = {k: v.tolist() for k, v in correct.items()}
    return report


def _stages(units):
    """A composite attack's stages summed over batches: `{stage: {attacked, fooled, seconds}}`."""
    out = {}
    for u in units:
        for st in u.get("stages", []):
            e = out.setdefault(st["stage"], {"attacked": 0, "fooled": 0, "seconds": 0.0})
            if "rejected" in st:
                e["rejected"] = e.get("rejected", 0) + int(st["rejected"])
            e["attacked"] += int(st["attacked"])
            e["fooled"] += int(st["attacked"]) - int(st["robust"])
            e["seconds"] += float(st["seconds"])
    for e in out.values():
        e["seconds"] = round(e["seconds"], 2)
    return out


def format_report(report):
    """Formats a report as a fixed-width table (one row per attack).

    Columns are as wide as their longest entry, so long labels, source paths
    and the parameters of C&W are shown whole.
    """
    header = ["attack", "source", "params", "error", "acc", "mean L2", "mean Linf"]
    rows = [
        [
            "clean",
            "-",
            "-",
            f"{report['clean_error']:.2%}",
            f"{report['clean_accuracy']:.2%}",
            "-",
            "-",
        ]
    ]
    for label, e in report["attacks"].items():
        params = ",".join(f"{k}={_short(v)}" for k, v in e.items() if k not in _NOT_PARAMS)
        rows.append(
            [
                label,
                e["source"],
                params or "-",
                f"{e['error']:.2%}",
                f"{e['accuracy']:.2%}",
                f"{e['mean_l2']:.3f}",
                f"{e['mean_linf']:.3f}",
            ]
        )
    if report.get("robust_accuracy") is not None:
        acc = report["robust_accuracy"]
        rows.append(["worst case", "-", "per example, all L-inf rows", f"{1 - acc:.2%}",
                     f"{acc:.2%}", "-", "-"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for r in [header] + rows:
        left = [f"{c:<{w}}" for c, w in zip(r[:3], widths[:3])]
        right = [f"{c:>{w}}" for c, w in zip(r[3:], widths[3:])]
        lines.append(" ".join(left + right).rstrip())
    lines.append(f"({report['num_examples']} examples)")
    return "\n".join(lines)


# Entry keys that are results, not attack parameters (the table's params column).
_NOT_PARAMS = frozenset(
    {
        "attack",
        "norm",
        "error",
        "accuracy",
        "mean_linf",
        "mean_l2",
        "fooled",
        "fooled_mean_linf",
        "fooled_mean_l2",
        "source",
        "seconds",
        "stages",
        "search",
    }
)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def jsonable(v):
    """`v`, with NumPy scalars as Python numbers (JSON-ready)."""
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


__all__ = ["format_report", "jsonable", "summarize"]
