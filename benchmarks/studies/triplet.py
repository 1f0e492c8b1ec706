r"""Does a triplet term help a strong adversarial training? Tuned, full budget, seeds, paired.

    python benchmarks/study.py --study=triplet --output_json=benchmarks/results/triplet_study_mnist.json
    python benchmarks/study.py --study=triplet --plot_from=benchmarks/results/triplet_study_mnist.json

Its four phases: a KerasTuner search per objective (`at_triplet` searches the triplet's
design on AT, `trades_best` puts that design on TRADES), a pilot that chooses the epochs,
every objective × seed judged by AutoAttack `fast` (seed 0 by `standard` too), and the
report: per objective mean ± std, each paired difference to AT and, for a triplet on
TRADES, to TRADES, with its 95% bootstrap interval; a forest plot. Set-up and results:
benchmarks/README.md, "Does a triplet term help a strong adversarial training?".
"""

import statistics

from study_report import by_variant, ci, correct, pct, run_records
from studylib import Evaluation, Pilot, Study, Tuning, Variant

# Weights searched: λ1 uniform [0.5, 2]; λ2 log-uniform [0.01, 2]; α log-uniform
# [0.05, 10] (logit gaps run to tens; cosine distances are < 2); β uniform [0.5, 8].
L1, L2, ALPHA, BETA = "--lambda1_range=0.5,2", "--lambda2_range=0.01,2", "--margin_range=0.05,10", "--beta_range=0.5,8"
NO_L1, NO_L2, NO_ALPHA, NO_BETA = "--lambda1_range=", "--lambda2_range=", "--margin_range=", "--beta_range="
NO_DISTANCES = "--triplet_distance_choices="  # Keep --triplet_distance (the tune command searches linf and l2 by default).
PAPER = ("--triplet_features=logits", "--triplet_distance=linf", "--triplet_negative=random")
TLA = ("--triplet_features=embedding", "--triplet_distance=cosine", "--triplet_negative=hardest")
DESIGN_SPACE = ("--triplet_features_choices=logits,embedding", "--triplet_distance_choices=linf,l2,cosine",
                "--triplet_negative_choices=random,hardest")


def _v(name, label, flags, tune, **kw):
    return Variant(name, tuple(flags), label, {"objective": name}, tuple(tune), **kw)


VARIANTS = (
    _v("at", "AT", ["--objective=at"], [L1, NO_L2, NO_ALPHA, NO_BETA, NO_DISTANCES]),
    _v("at2l", "AT²L (paper)", ["--objective=at2l", *PAPER], [L1, L2, ALPHA, NO_BETA, NO_DISTANCES]),
    _v("at_triplet", "AT + best triplet", ["--objective=at", "--lambda2=0.5"], [L1, L2, ALPHA, NO_BETA, *DESIGN_SPACE]),
    _v("tla_at", "AT + TLA-style triplet", ["--objective=at", "--lambda2=0.5", *TLA], [NO_L1, L2, ALPHA, NO_BETA, NO_DISTANCES]),
    _v("trades", "TRADES", ["--objective=trades"], [NO_L1, NO_L2, NO_ALPHA, BETA, NO_DISTANCES]),
    _v("trades_best", "TRADES + best triplet", ["--objective=trades", "--lambda2=0.5"],
       [NO_L1, L2, ALPHA, BETA, NO_DISTANCES], design_from="at_triplet"),
    _v("mart", "MART", ["--objective=mart"], [NO_L1, NO_L2, NO_ALPHA, BETA, NO_DISTANCES]),
)
LABELS = {v.name: v.label for v in VARIANTS}
REFERENCE = "at"
COLLAPSED = 0.5  # Mean clean accuracy below which an objective's model has collapsed.
# The objectives with a triplet term, and the base each one's effect is measured against.
TRIPLETS = {"at2l": "at", "at_triplet": "at", "tla_at": "at", "trades_best": "trades"}


def base_of(name):
    return TRIPLETS.get(name, REFERENCE)


def _seeds(n):
    return f"{n} seed{'' if n == 1 else 's'}"


def report(state, replicates=2000):
    """Per objective mean ± std over seeds, and the paired difference to AT with its interval."""
    from at2l_tf.evaluation import paired

    by = by_variant(run_records(state), key="objective")
    rows = []
    ref = by.get(REFERENCE, {})
    for name in LABELS:
        runs = by.get(name)
        if not runs:
            continue
        clean = [r["fast"]["clean_accuracy"] for r in runs.values()]
        robust = [r["fast"]["robust_accuracy"] for r in runs.values()]
        row = {
            "objective": name, "label": LABELS[name], "seeds": sorted(runs),
            "clean": {"mean": statistics.mean(clean), "std": statistics.stdev(clean) if len(clean) > 1 else None},
            "robust": {"mean": statistics.mean(robust), "std": statistics.stdev(robust) if len(robust) > 1 else None},
            "standard": {str(s): r["standard"]["robust_accuracy"] for s, r in runs.items() if "standard" in r},
            "train_flags": next(iter(runs.values()))["train_flags"],
        }
        if name != REFERENCE and set(runs) & set(ref):
            row["vs_at"] = paired.paired_bootstrap(correct(ref, "fast"), correct(runs, "fast"), replicates=replicates)
        base = by.get(base_of(name), {})
        if base_of(name) != REFERENCE and set(runs) & set(base):
            # The triplet's effect on a base other than AT: paired with that base's runs.
            row["vs_base"] = paired.paired_bootstrap(correct(base, "fast"), correct(runs, "fast"), replicates=replicates)
            row["base"] = base_of(name)
        rows.append(row)
    return rows


def current_report(state):
    """The state's stored report if it was built from exactly the state's runs, else a new one.

    A sitting stopped by `--max_hours` adds runs without reporting; the report an
    earlier sitting stored is then stale and must not be printed or drawn.
    """
    stored = state.get("report")
    runs = sorted((r["objective"], int(r["seed"])) for r in run_records(state))
    if stored and sorted((row["objective"], int(s)) for row in stored for s in row["seeds"]) == runs:
        return stored
    return report(state)


def triplet_effect(row):
    """The paired difference a row's triplet term makes to its base, or None."""
    if row["objective"] not in TRIPLETS:
        return None
    return row.get("vs_base") if base_of(row["objective"]) != REFERENCE else row.get("vs_at")


def answer(rows):
    """The README's first sentence, from the intervals of each triplet term against its base."""
    effects = [(r, e) for r, e in ((r, triplet_effect(r)) for r in rows) if e]
    if not effects:
        return "No paired comparison yet."
    v0 = effects[0][1]
    size = f"{_seeds(len(v0['seeds']))} × {v0['num_examples']} test images, paired 95% bootstrap intervals"

    def minus(r, v):
        return f"{r['label']} − {LABELS[base_of(r['objective'])]} {ci(v)}"

    above = [(r, v) for r, v in effects if v["low"] > 0]
    if above:
        best, v = max(above, key=lambda e: e[1]["difference"])
        others = "; ".join(minus(r, w) for r, w in effects if r is not best)
        return (f"{best['label']} adds {ci(v)} points of AutoAttack robust accuracy over "
                f"{LABELS[base_of(best['objective'])]} ({size})"
                + (f"; the other triplet terms: {others}." if others else "."))
    listed = "; ".join(minus(r, v) for r, v in effects)
    below = [r["label"] for r, v in effects if v["high"] < 0]
    if below:
        return (f"No triplet term helps at this budget, and {', '.join(below)} "
                f"{'hurts' if len(below) == 1 else 'hurt'}: {listed} points ({size}).")
    return f"No effect of a triplet term distinguishable from zero at this budget: {listed} points ({size})."


def markdown(state):
    rows = current_report(state)
    lines = [answer(rows), "",
             ("| objective | seeds | clean | AutoAttack fast (robust) | − AT, paired [95% CI] "
              "| triplet term − its base [95% CI] | AA standard (seed 0) |"),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        v = r.get("vs_at")
        diff = ci(v) if v else "–"
        e = triplet_effect(r)
        effect = f"{ci(e)} (− {LABELS[base_of(r['objective'])]})" if e else "–"
        std = ", ".join(f"{100 * a:.1f}%" for a in r["standard"].values()) or "–"
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean'])} | **{pct(r['robust'])}** | "
                     f"{diff} | {effect} | {std} |")
    return "\n".join(lines)


def plot(state, png):
    from at2l_tf.errors import ConfigError
    from at2l_tf.evaluation import plots

    rows = current_report(state)
    entries = []  # Each objective against AT, then each triplet against a base other than AT.
    for key, base in (("vs_at", lambda r: REFERENCE), ("vs_base", lambda r: r["base"])):
        for r in rows:
            if key in r:
                v = r[key]
                entries.append({"label": f"{r['label']} − {LABELS[base(r)]}",
                                "estimate": 100 * v["difference"], "low": 100 * v["low"],
                                "high": 100 * v["high"], "seeds": v["seeds"], "n": v["num_examples"],
                                "collapsed": r["clean"]["mean"] < COLLAPSED})
    if not entries:
        raise ConfigError("no paired comparison in the study yet: nothing to plot")
    # A collapsed model (MART without a clean start: a constant classifier) is tens of
    # points off; the axis is scaled to the others, and its row is cut at the edge.
    scaled = [e for e in entries if not e["collapsed"]]
    xlim = None
    if scaled and len(scaled) < len(entries):
        low, high = min(0.0, *(e["low"] for e in scaled)), max(0.0, *(e["high"] for e in scaled))
        xlim = (low - 0.5, high + 0.5) if high - low < 1 else (low, high)
    plots.plot_forest(
        png,
        [{k: e[k] for k in ("label", "estimate", "low", "high")} for e in entries],
        title="Paired differences of robust accuracy\n(AutoAttack fast, eps 0.3, MNIST)",
        xlabel="difference, points\n(paired by seed and image; 95% bootstrap interval)",
        note=f"{_seeds(len(entries[0]['seeds']))} × {entries[0]['n']} test images",
        xlim=xlim,
    )
    return png


STUDY = Study(
    name="triplet",
    variants=VARIANTS,
    # --mixed_precision=auto: issue 21's check found bfloat16 harmless; judged in float32.
    recipe=("--flagfile=flags/mnist_triplet_study.flags", "--mixed_precision=auto", "--eval_examples=0"),
    seeds=(0, 1, 2),
    evaluation=Evaluation(autoattack="fast", examples=1000, also={"standard": 1}),
    pairs=(*((REFERENCE, v.name) for v in VARIANTS[1:]), ("trades", "trades_best")),
    tuning=Tuning(trials=6, train_examples=10000, epochs=2),
    pilot=Pilot(variant=REFERENCE, epochs=12, tolerance=0.01),
    markdown=markdown,
    report=report,
    plot=plot,
)
