r"""Is the bfloat16 search as strong as the float32 one? One model, the same evaluation twice,
`--attack_precision=float32` then `bfloat16`, compared per example (benchmarks/README.md,
"Attacks searched in bfloat16, every verdict in float32": its commands and tables).

    python benchmarks/attack_precision_equivalence.py --model_dir=savedmodels/mnist_reference \
        --num_examples=10000 --attacks=autoattack --autoattack_version=standard \
        --workdir_root=runs/equiv_reference --output_json=benchmarks/results/attack_precision_equivalence_reference.json
    python benchmarks/attack_precision_equivalence.py \
        --markdown_from=benchmarks/results/attack_precision_equivalence_reference.json

Both runs are `at2l_tf.evaluate.evaluate(config)` on the same model, images, batches, eps,
seed and attacks (every `--<attack>_<param>` flag of the evaluate command is passed to both),
differing only in `AttacksSection.precision`; every verdict is the float32 model's. Each run
keeps its units in `<workdir_root>/<precision>.work` (its report beside it), so a killed run
continues and a finished one is rebuilt without attacking again. An evaluation already run
by the evaluate command with the same settings and `--workdir=<workdir_root>/float32.work`
is that half, found there: the reference's 10,000-image evaluation
(`--attacks=pgd,autoattack --pgd_step_size=0.01 --batch_size=1000`) serves both, and only
the bfloat16 half is then attacked.

Per example (from the units), *robust* = right clean and under every L∞ attack run (the
report's worst case, checked against it); the cells `both_broke`, `only_float32_broke` (the
bfloat16 search missed it), `only_bfloat16_broke`, `neither_broke` add up to `num_examples`,
with the discordant indices. `difference_points` = robust accuracy with the bfloat16 search −
with float32 (positive: bfloat16 weaker), its 95% interval a paired bootstrap over examples
(`--bootstrap` multinomial draws of the four cells, percentile, seed 0), beside the exact
McNemar p-value of the discordant counts. `timing`: per attack and AutoAttack stage, the
seconds of each precision (from the units), the speed-up and the rejected candidates (fooled
the bfloat16 copy, not the float32 model). `decision`: the rule of issue 32 (bfloat16 never
weaker by more than `THRESHOLD_POINTS`), and whether this run is one the rule names.
"""

import math
import os
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import mdtable  # benchmarks/: this script's directory is on sys.path.  # isort: skip
import provenance  # isort: skip
import numpy as np  # noqa: E402

from at2l_tf import evaluate as ev  # noqa: E402
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.evaluation.store import ResultStore, unit_key  # noqa: E402
from at2l_tf.log import log  # noqa: E402
from at2l_tf.precision import NATIVE_BF16_FLAGS  # noqa: E402

NAME = "attack_precision_equivalence"
PRECISIONS = ("float32", "bfloat16")
# Issue 32: bfloat16 may be weaker by at most this many points.
THRESHOLD_POINTS = 0.1
RULE_EXAMPLES = 10000

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", "savedmodels/mnist_reference", "SavedModel export or .keras file.")
flags.DEFINE_integer("num_examples", 1000, "Evaluate the first N test images.")
flags.DEFINE_integer("batch_size", 500, "Images per attack batch.")
flags.DEFINE_list("attacks", ["autoattack"], "Attacks (evaluate's names), run in both precisions.")
flags.DEFINE_float("eps", None, "L-inf radius; default the dataset's (MNIST 0.3).")
flags.DEFINE_integer("seed", 0, "Seed of both runs.")
flags.DEFINE_string("split", "test", "Split.")
flags.DEFINE_string("workdir_root", None, "Directory of the two runs' workdirs and reports "
                    "(required): <root>/<precision>.work and <root>/<precision>.json.")
flags.DEFINE_string("output_json", None, "Where to write the comparison (atomically).")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")
flags.DEFINE_integer("bootstrap", 10000, "Bootstrap resamples of the 95% interval.")
flags.DEFINE_integer("verbose", 2, "Progress of each evaluation: 0 none, 1 bar on a terminal, "
                     "2 one line per batch and attack stage.")
ev.define_attack_param_flags(FLAGS, " Passed to both runs.")  # --autoattack_version, --apgd_ce_steps, ...


def _log(msg):
    log(msg, prefix=NAME)


def config_for(precision, settings):
    root = settings["workdir_root"]
    return ev.EvaluationConfig(
        model=ev.ModelSection(model_dir=settings["model_dir"]),
        images=ev.ImagesSection(split=settings["split"], num_examples=settings["num_examples"],
                                batch_size=settings["batch_size"]),
        attacks=ev.AttacksSection(names=tuple(settings["attacks"]), eps=settings["eps"],
                                  seed=settings["seed"], params=settings["params"],
                                  precision=precision),
        output=ev.OutputSection(output_json=os.path.join(root, f"{precision}.json"),
                                workdir=os.path.join(root, f"{precision}.work"),
                                verbose=settings["verbose"]),
    )


def per_example(workdir, labels, num_examples, batch_size):
    """`{"clean": bool[n], label: bool[n], ...}` from the units of `workdir` (right or wrong)."""
    store = ResultStore(workdir)
    batches = math.ceil(num_examples / batch_size)
    out = {}
    for i, label in enumerate([None, *labels]):
        parts = []
        key = unit_key(None if label is None else i - 1)
        for b in range(batches):
            unit = store.load(b, key)
            if unit is None:
                raise ConfigError(f"{workdir} lacks unit {store.path(b, key)}")
            parts.append(np.asarray(unit["correct"], bool))
        out[label or "clean"] = np.concatenate(parts)
    return out


def cells(robust_a, robust_b):
    """The four paired counts of A = float32, B = bfloat16 (robust = not broken), and the
    indices of the discordant ones."""
    only_a = np.flatnonzero(~robust_a & robust_b)
    only_b = np.flatnonzero(robust_a & ~robust_b)
    return {
        "both_broke": int(np.sum(~robust_a & ~robust_b)),
        "only_float32_broke": len(only_a),
        "only_bfloat16_broke": len(only_b),
        "neither_broke": int(np.sum(robust_a & robust_b)),
        "only_float32_broke_indices": only_a.tolist(),
        "only_bfloat16_broke_indices": only_b.tolist(),
    }


def mcnemar_exact_p(b, c):
    """Two-sided exact McNemar p-value: 2·P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2 * tail)


def bootstrap_interval(counts, n, resamples, seed=0):
    """95% percentile interval, in points, of (only_float32_broke − only_bfloat16_broke) / n
    under resampling the n examples with replacement (multinomial over the four cells)."""
    shares = np.array([counts["both_broke"], counts["only_float32_broke"],
                       counts["only_bfloat16_broke"], counts["neither_broke"]], float) / n
    draws = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    diff = 100.0 * (draws[:, 1] - draws[:, 2]) / n
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def timing(reports):
    """Per attack (and AutoAttack stage): seconds, speed-up, stage counts and rejections."""
    out = {}
    f32, bf16 = (reports[p]["attacks"] for p in PRECISIONS)
    for label in f32:
        a, b = f32[label], bf16[label]
        entry = {
            "seconds": {"float32": a["seconds"], "bfloat16": b["seconds"]},
            "speedup": round(a["seconds"] / b["seconds"], 3) if b["seconds"] else None,
            "rejected": (b.get("search") or {}).get("rejected"),
            "fooled_search_only": (b.get("search") or {}).get("fooled_search_only"),
        }
        if "stages" in a:
            entry["stages"] = {}
            for stage in a["stages"]:
                sa, sb = a["stages"][stage], b["stages"].get(stage, {})
                entry["stages"][stage] = {
                    "seconds": {"float32": sa["seconds"], "bfloat16": sb.get("seconds")},
                    "speedup": (round(sa["seconds"] / sb["seconds"], 3)
                                if sb.get("seconds") else None),
                    "attacked": {"float32": sa["attacked"], "bfloat16": sb.get("attacked")},
                    "fooled": {"float32": sa["fooled"], "bfloat16": sb.get("fooled")},
                    "rejected": sb.get("rejected"),
                }
        out[label] = entry
    return out


def is_rule_measurement(num_examples, attack_names):
    """Whether a comparison is one the rule names: AutoAttack on at least `RULE_EXAMPLES`
    images, alone or beside other attacks (the reference's own evaluation adds PGD-40; the
    worst case over all of them is compared, in each precision)."""
    return num_examples >= RULE_EXAMPLES and "autoattack" in attack_names


def compare(settings, reports):
    """The comparison of the two finished runs (see the module docstring)."""
    n = settings["num_examples"]
    labels = list(reports["float32"]["attacks"])
    linf = reports["float32"]["robust_accuracy_attacks"]
    correct = {}
    for p in PRECISIONS:
        workdir = os.path.join(settings["workdir_root"], f"{p}.work")
        correct[p] = per_example(workdir, labels, n, settings["batch_size"])
    robust = {}
    for p in PRECISIONS:
        robust[p] = np.logical_and.reduce([correct[p]["clean"]] + [correct[p][k] for k in linf])
        if linf and not math.isclose(float(robust[p].mean()), reports[p]["robust_accuracy"]):
            raise RuntimeError(f"{p}: the units' worst case {robust[p].mean()} differs from the "
                               f"report's {reports[p]['robust_accuracy']}")
    if not np.array_equal(correct["float32"]["clean"], correct["bfloat16"]["clean"]):
        raise RuntimeError("the clean verdicts differ between the runs: not the same images/model")
    counts = cells(robust["float32"], robust["bfloat16"])
    diff = 100.0 * (counts["only_float32_broke"] - counts["only_bfloat16_broke"]) / n
    interval = bootstrap_interval(counts, n, settings["bootstrap"])
    per_attack = {}
    for label in labels:
        c = cells(correct["float32"][label], correct["bfloat16"][label])
        per_attack[label] = {
            "accuracy": {p: reports[p]["attacks"][label]["accuracy"] for p in PRECISIONS},
            **{k: v for k, v in c.items() if not k.endswith("indices")},
        }
    return {
        "clean_accuracy": reports["float32"]["clean_accuracy"],
        "robust_accuracy": {p: float(robust[p].mean()) for p in PRECISIONS},
        "agreement": float(np.mean(robust["float32"] == robust["bfloat16"])),
        **counts,
        "difference_points": round(diff, 4),
        "difference_interval_95": interval,
        "interval_method": (f"paired bootstrap over examples, {settings['bootstrap']} resamples "
                            "(multinomial over the four cells), percentile, seed 0"),
        "mcnemar_exact_p": mcnemar_exact_p(counts["only_float32_broke"],
                                           counts["only_bfloat16_broke"]),
        "per_attack": per_attack,
        "timing": timing(reports),
        "decision": {
            "rule": (f"--attack_precision=auto may become the default only if the bfloat16 search "
                     f"is never weaker than float32 by more than {THRESHOLD_POINTS} points on "
                     "either model: the reference on 10,000 images under AutoAttack standard, "
                     "the main job's model under AutoAttack fast"),
            "threshold_points": THRESHOLD_POINTS,
            "passes": diff <= THRESHOLD_POINTS,
            "upper_95_within": interval[1] <= THRESHOLD_POINTS,
            "rule_measurement": is_rule_measurement(n, settings["attacks"]),
        },
    }


def _fmt_s(v):
    return "" if v is None else f"{v:.2f}"


def _fmt_x(v):
    return "" if v is None else f"{v:.2f}×"


def markdown(record):
    """The table of a results JSON (what the run prints and `--markdown_from` reprints)."""
    s, c = record["settings"], record["comparison"]
    params = "; ".join(f"{a} " + ", ".join(f"{k}={v}" for k, v in sorted(p.items()))
                       for a, p in sorted(s["params"].items())) or "their defaults"
    m = record["machine"]
    cpu = ", ".join(str(v) for v in (m["cpu_model"], m.get("cpu_family_model") and
                                     f"family/model {m['cpu_family_model']}",
                                     "native bfloat16" if record["native_bfloat16"]
                                     else "bfloat16 emulated") if v)
    lines = [
        f"**{record['model']}**, first {s['num_examples']} {s['split']} images, "
        f"attacks {', '.join(s['attacks'])} ({params}), eps {record['eps']}, seed {s['seed']}; "
        f"CPU {cpu}, {m['cpu_count']} cores; commit {record['git_commit']}, {record['date']}",
        "",
    ]
    ra = c["robust_accuracy"]
    rows = [["clean accuracy", f"{c['clean_accuracy']:.2%}", f"{c['clean_accuracy']:.2%}", "", ""],
            ["robust accuracy (worst case)", f"{ra['float32']:.2%}", f"{ra['bfloat16']:.2%}",
             f"{c['difference_points']:+.2f} pt [{c['difference_interval_95'][0]:+.2f}, "
             f"{c['difference_interval_95'][1]:+.2f}]", ""]]
    for label, pa in c["per_attack"].items():
        acc = pa["accuracy"]
        rows.append([f"{label} accuracy", f"{acc['float32']:.2%}", f"{acc['bfloat16']:.2%}",
                     f"{100 * (acc['bfloat16'] - acc['float32']):+.2f} pt", ""])
    for label, t in c["timing"].items():
        rows.append([f"{label} seconds", _fmt_s(t["seconds"]["float32"]),
                     _fmt_s(t["seconds"]["bfloat16"]), _fmt_x(t["speedup"]),
                     "" if t["rejected"] is None else t["rejected"]])
        for stage, st in (t.get("stages") or {}).items():
            rows.append([f"  {stage} seconds (attacked f32/bf16: {st['attacked']['float32']}/"
                         f"{st['attacked']['bfloat16']})", _fmt_s(st["seconds"]["float32"]),
                         _fmt_s(st["seconds"]["bfloat16"]), _fmt_x(st["speedup"]),
                         "" if st["rejected"] is None else st["rejected"]])
    lines += mdtable.markdown_table(
        ["", "float32 search", "bfloat16 search", "bf16 − f32 (95%) / speed-up", "rejected"],
        rows, ["---", "---:", "---:", "---:", "---:"])
    d = c["decision"]
    lines += [
        "",
        f"Per example (worst case), of {s['num_examples']}: both broke {c['both_broke']}, only "
        f"float32 broke {c['only_float32_broke']}, only bfloat16 broke {c['only_bfloat16_broke']}, "
        f"neither {c['neither_broke']} (agreement {c['agreement']:.2%}; exact McNemar p = "
        f"{c['mcnemar_exact_p']:.3g}). Interval: {c['interval_method']}.",
        "",
        f"Rule: {d['rule']}. This run: robust accuracy with the bfloat16 search − with float32 "
        f"= {c['difference_points']:+.2f} points (positive: bfloat16 weaker) → "
        f"{'PASSES' if d['passes'] else 'FAILS'} (the difference is "
        f"{'within' if d['passes'] else 'beyond'} {d['threshold_points']}; its upper 95% end, "
        f"{c['difference_interval_95'][1]:+.2f}, {'within' if d['upper_95_within'] else 'beyond'})"
        + ("" if d["rule_measurement"] else "; not a rule measurement (the rule needs 10,000 "
           "images under AutoAttack)") + ".",
    ]
    return "\n".join(lines)


def main(argv):
    if mdtable.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    started = time.time()
    if not FLAGS.workdir_root:
        raise ConfigError("--workdir_root is required (the two runs' workdirs, kept for resume)")
    if FLAGS.bootstrap < 1:
        raise ConfigError(f"bootstrap must be >= 1, received bootstrap={FLAGS.bootstrap}")
    settings = {
        "model_dir": FLAGS.model_dir,
        "num_examples": FLAGS.num_examples,
        "batch_size": FLAGS.batch_size,
        "split": FLAGS.split,
        "attacks": list(FLAGS.attacks),
        "eps": FLAGS.eps,
        "seed": FLAGS.seed,
        "params": ev.attack_params_from_flags(FLAGS),
        "workdir_root": FLAGS.workdir_root,
        "bootstrap": FLAGS.bootstrap,
        "verbose": FLAGS.verbose,
    }
    if not settings["attacks"]:
        raise ConfigError("--attacks needs at least one attack")
    configs = {p: config_for(p, settings) for p in PRECISIONS}
    for config in configs.values():
        config.validate()  # Every bad value before anything runs.
    cpu_flags = set(provenance._cpuinfo().get("flags", "").split())
    load_avg = os.getloadavg()[0]
    os.makedirs(FLAGS.workdir_root, exist_ok=True)
    reports = {}
    for i, p in enumerate(PRECISIONS):
        _log(f"run {i + 1}/2: --attack_precision={p} in {configs[p].output.workdir}")
        reports[p] = ev.evaluate(configs[p])
    summary = {
        "benchmark": NAME,
        "model": reports["float32"].get("model_path") or settings["model_dir"],
        "settings": settings,
        "eps": reports["float32"]["eps"],
        "native_bfloat16": bool(cpu_flags & set(NATIVE_BF16_FLAGS)),
        "loaded": load_avg > (os.cpu_count() or 1),
        "load_average_1min": round(load_avg, 2),
        "attack_params": {k: {kk: vv for kk, vv in v.items() if kk in (
            "version", "steps", "queries", "restarts", "target_classes")}
            for k, v in reports["float32"]["attacks"].items()},
        "reports": {p: os.path.join(settings["workdir_root"], f"{p}.json") for p in PRECISIONS},
        "comparison": compare(settings, reports),
        "versions": provenance.versions(None),
        **provenance.provenance(os.path.basename(__file__), started),
    }
    print(markdown(summary))
    provenance.write(FLAGS.output_json, summary, os.path.basename(__file__), started)


if __name__ == "__main__":
    cli.run(main, NAME)
