r"""Does a triplet term help a strong adversarial training? Tuned, full budget, seeds, paired.

    python benchmarks/triplet_study.py --output_json=benchmarks/results/triplet_study_mnist.json
    python benchmarks/triplet_study.py ... --max_hours=2        # stop cleanly after 2 hours
    python benchmarks/triplet_study.py --markdown_from=benchmarks/results/triplet_study_mnist.json
    python benchmarks/triplet_study.py --plot_from=benchmarks/results/triplet_study_mnist.json \
        --plot_png=benchmarks/results/triplet_study_mnist_forest.png

One command runs every phase, skipping what the JSON already holds, so the study
spreads over several sittings (the JSON is the state: it is written after every
trial search, pilot and run, atomically, and committed between sittings; the
run directories under `--study_dir` are scratch):

1. **tune**: one KerasTuner random search per objective (`python -m at2l_tf.tune`,
   a subprocess each) at a reduced budget (`--tune_train_examples` images,
   `--tune_epochs` epochs), with the **same number of trials** (`--trials`) for
   every objective, objective `val_robust_acc` (APGD-CE on 1,000 validation
   images). `at_best` is the best trial of the search over the triplet's design
   space on AT (`at_triplet`); `trades_best` puts that variant (features,
   distance, negative) on TRADES and searches its weights.
2. **pilot**: AT (its tuned λ1) on the full budget for `--pilot_epochs`; every
   epoch's checkpoint is judged by APGD-CE on the first 1,000 validation images,
   and the study's epochs are the first epoch within `--pilot_tolerance` of the
   best (where validation robust accuracy stops rising). The same for everyone.
3. **runs**: every objective × seed (`--seeds`, seeds outermost) on all 55,000
   training images, the recipe of `flags/mnist_triplet_study.flags` (PGD-10 as
   training attack; TRADES / MART their own 10-step inner attacks), judged in
   float32 by AutoAttack `fast` (APGD-CE + APGD-T, 100 iterations) on the first
   `--test_examples` test images, per-example correctness kept. For the first
   seed, AutoAttack `standard` (+ Square, 5,000 queries) on the same images too:
   the masking check.
4. **report**: per objective mean ± std over seeds (clean, robust); per objective
   the paired difference to AT (same seeds, same images) with a 95% interval
   from a bootstrap over seeds and examples (`evaluation.paired`); a forest plot.

`--max_hours` stops before a phase step that would not finish in the time left
(estimated from the steps done), leaving the JSON complete for what ran.
"""

import functools
import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402
from at2l_tf.log import log  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
RECIPE = os.path.join(ROOT, "flags", "mnist_triplet_study.flags")

FLAGS = flags.FLAGS
flags.DEFINE_string("output_json", None, "The study's state and results (required unless --markdown_from/--plot_from).")
flags.DEFINE_string("study_dir", "runs/triplet_study", "Scratch directory of the searches and runs.")
flags.DEFINE_string("recipe", RECIPE, "Flagfile of the full-budget recipe every run shares.")
flags.DEFINE_list("objectives", None, "Objectives to run (default all, in OBJECTIVES' order).")
flags.DEFINE_list("phases", ["tune", "pilot", "runs", "report"], "Phases to run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the full-budget runs.")
flags.DEFINE_integer("trials", 6, "KerasTuner trials per objective (the same for all).")
flags.DEFINE_integer("tune_train_examples", 10000, "Training images of a tuning trial.")
flags.DEFINE_integer("tune_epochs", 2, "Epochs of a tuning trial.")
flags.DEFINE_integer("pilot_epochs", 12, "Epochs of the AT pilot run.")
flags.DEFINE_float("pilot_tolerance", 0.01, "The study's epochs: the first pilot epoch within this of the best.")
flags.DEFINE_integer("run_epochs", None, "Override the pilot's choice of epochs.")
flags.DEFINE_integer("test_examples", 1000, "First N test images of every evaluation.")
flags.DEFINE_integer("standard_seeds", 1, "Seeds (the first ones) also judged by AutoAttack standard.")
flags.DEFINE_string("precision", "auto", "--mixed_precision of every training (issue 21's check found bfloat16 harmless).")
flags.DEFINE_float("max_hours", None, "Stop before a step that would not finish within this many hours.")
flags.DEFINE_integer("bootstrap_replicates", 2000, "Bootstrap replicates of the intervals.")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")
flags.DEFINE_string("plot_from", None, "Draw the forest plot of this JSON (to --plot_png) and exit.")
flags.DEFINE_string("plot_png", None, "The forest plot PNG; default beside --output_json.")

# Every objective: its train flags, and what its search tunes (tune-command flags).
# Weights searched: λ1 uniform [0.5, 2]; λ2 log-uniform [0.01, 2]; α log-uniform
# [0.05, 10] (logit gaps run to tens; cosine distances are < 2); β uniform [0.5, 8].
L1, L2, ALPHA, BETA = "--lambda1_range=0.5,2", "--lambda2_range=0.01,2", "--margin_range=0.05,10", "--beta_range=0.5,8"
NO_L1, NO_L2, NO_ALPHA, NO_BETA = "--lambda1_range=", "--lambda2_range=", "--margin_range=", "--beta_range="
NO_NORMS = "--norms="  # Keep --norm (the tune command searches linf and l2 by default).
PAPER = ["--triplet_features=logits", "--triplet_distance=linf", "--triplet_negative=random"]
TLA = ["--triplet_features=embedding", "--triplet_distance=cosine", "--triplet_negative=hardest"]
DESIGN_SPACE = ["--triplet_features_choices=logits,embedding", "--norms=linf,l2,cosine",
                "--triplet_negative_choices=random,hardest"]
OBJECTIVES = {
    "at": {"label": "AT", "train": ["--defense=at"], "tune": [L1, NO_L2, NO_ALPHA, NO_BETA, NO_NORMS]},
    "at2l": {"label": "AT²L (paper)", "train": ["--defense=at2l", *PAPER], "tune": [L1, L2, ALPHA, NO_BETA, NO_NORMS]},
    "at_triplet": {"label": "AT + best triplet", "train": ["--defense=at", "--lambda2=0.5"],
                   "tune": [L1, L2, ALPHA, NO_BETA, *DESIGN_SPACE], "variant_search": True},
    "tla_at": {"label": "AT + TLA-style triplet", "train": ["--defense=at", "--lambda2=0.5", *TLA],
               "tune": [NO_L1, L2, ALPHA, NO_BETA, NO_NORMS]},
    "trades": {"label": "TRADES", "train": ["--defense=trades"], "tune": [NO_L1, NO_L2, NO_ALPHA, BETA, NO_NORMS]},
    "trades_best": {"label": "TRADES + best triplet", "train": ["--defense=trades", "--lambda2=0.5"],
                    "tune": [NO_L1, L2, ALPHA, BETA, NO_NORMS], "variant_from": "at_triplet", "base": "trades"},
    "mart": {"label": "MART", "train": ["--defense=mart"], "tune": [NO_L1, NO_L2, NO_ALPHA, BETA, NO_NORMS]},
}
REFERENCE = "at"
COLLAPSED = 0.5  # Mean clean accuracy below which an objective's model has collapsed.
# The objectives with a triplet term; each one's effect is its difference to its base
# (the same objective without the term): AT, or TRADES for trades_best.
TRIPLETS = ("at2l", "at_triplet", "tla_at", "trades_best")
# The hyperparameters a search may tune, which its best trial passes on to the runs.
TUNED_FLAGS = ("lambda1", "lambda2", "margin", "beta", "triplet_features", "norm", "triplet_negative")


def base_of(name):
    return OBJECTIVES[name].get("base", REFERENCE)


def _ci(v):
    """A paired comparison as `+d [low, high]`, in points."""
    return f"{100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"


def _correct(runs):
    """Per seed, the per-example AutoAttack `fast` correctness of an objective's runs."""
    from at2l_tf.evaluation import paired

    return {s: paired.decode(r["fast"]["robust_correct"]) for s, r in runs.items()}


def _seeds(n):
    return f"{n} seed{'' if n == 1 else 's'}"


_log = functools.partial(log, prefix="triplet_study")


class Budget:
    """`--max_hours`: may a step of about `estimate` seconds still start?"""

    def __init__(self, hours):
        self.deadline = None if hours is None else time.time() + 3600 * hours

    def allows(self, estimate, what):
        if self.deadline is None or time.time() + (estimate or 0) <= self.deadline:
            return True
        _log(f"stopping before {what}: about {estimate / 60:.0f} min, "
             f"{max(self.deadline - time.time(), 0) / 60:.0f} min left of --max_hours")
        return False


class Study:
    """The JSON state: loaded at start, written (atomically) after every step."""

    def __init__(self, path):
        self.path = path
        self.started = time.time()
        self.state = {"benchmark": "triplet_study", "tuning": {}, "pilot": None, "runs": {}, "report": None}
        if path and os.path.exists(path):
            with open(path) as f:
                self.state.update(json.load(f))
        self.state.setdefault("sittings", [])
        self.state["sittings"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "machine": benchlib.machine(), "git_commit": benchlib.git_commit()})

    def save(self):
        self.state["sittings"][-1]["seconds"] = round(time.time() - self.started, 1)
        self.state["cpu_hours"] = round(sum(s.get("seconds", 0) for s in self.state["sittings"]) * 2 / 3600, 2)
        self.state.update(benchlib.provenance("triplet_study.py", self.started))
        atomic_write_json(self.path, self.state)


def _run(cmd, what):
    """Runs a command of the package (a subprocess: its own TensorFlow, its own policy)."""
    _log(f"{what}: {' '.join(cmd)}")
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"{what} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return time.time() - started, proc.stdout


def tuned_train_flags(study, name):
    """The train flags of objective `name` with its tuned weights (and variant)."""
    spec = OBJECTIVES[name]
    out = list(spec["train"])
    source = spec.get("variant_from")
    if source:
        best = study.state["tuning"][source]["best"]
        out += [f"--{k}={best[k]}" for k in ("triplet_features", "norm", "triplet_negative")]
    tuned = study.state["tuning"].get(name, {}).get("best") or {}
    out += [f"--{k}={v}" for k, v in tuned.items() if k in TUNED_FLAGS and v is not None]
    return out


def phase_tune(study, names, budget):
    for name in names:
        if name in study.state["tuning"] and study.state["tuning"][name].get("complete"):
            continue
        spec = OBJECTIVES[name]
        source = spec.get("variant_from")
        if source and not study.state["tuning"].get(source, {}).get("complete"):
            _log(f"tuning {name} waits for {source}'s search")
            continue
        done = [t["seconds"] for t in study.state["tuning"].values() if t.get("seconds")]
        if not budget.allows(statistics.mean(done) if done else 0, f"the search of {name}"):
            return False
        tune_dir = os.path.join(FLAGS.study_dir, "tune", name)
        cmd = [sys.executable, "-m", "at2l_tf.tune", f"--flagfile={FLAGS.recipe}",
               *(tuned_train_flags(study, name) if source else spec["train"]), *spec["tune"],
               f"--mixed_precision={FLAGS.precision}",
               f"--max_train_examples={FLAGS.tune_train_examples}", f"--epochs={FLAGS.tune_epochs}",
               f"--max_trials={FLAGS.trials}", f"--tune_dir={tune_dir}", "--eval_examples=0",
               "--tuner=random"]
        seconds, _ = _run(cmd, f"search of {name}")
        with open(os.path.join(tune_dir, "summary.json")) as f:
            summary = json.load(f)
        best = summary["best"]
        study.state["tuning"][name] = {
            "complete": True,
            "seconds": round(seconds, 1),
            "trials": [{"tuned": t["tuned"], "val_robust_acc": t["val_robust_acc"], "status": t["status"]}
                       for t in summary["trials"]],
            "best": {k: v for k, v in (best or {}).get("hyperparameters", {}).items() if k in TUNED_FLAGS},
            "best_val_robust_acc": (best or {}).get("val_robust_acc"),
            "command": " ".join(cmd[1:]),
        }
        study.save()
    return True


def phase_pilot(study, budget):
    if study.state["pilot"] and study.state["pilot"].get("complete"):
        return True
    if REFERENCE not in study.state["tuning"]:
        _log("the pilot waits for AT's search")
        return False
    if not budget.allows(0, "the pilot"):
        return False
    workdir = os.path.join(FLAGS.study_dir, "pilot")
    cmd = [sys.executable, "-m", "at2l_tf.train", f"--flagfile={FLAGS.recipe}",
           *tuned_train_flags(study, REFERENCE), f"--epochs={FLAGS.pilot_epochs}",
           f"--mixed_precision={FLAGS.precision}", f"--workdir={workdir}",
           "--export_dir=", "--eval_examples=0", "--seed=0"]
    results = os.path.join(workdir, "results.json")
    checkpoints = [os.path.join(workdir, "checkpoints", f"epoch-{e:02d}.weights.h5")
                   for e in range(1, FLAGS.pilot_epochs + 1)]
    if os.path.exists(results) and all(os.path.exists(c) for c in checkpoints):
        with open(results) as f:  # Trained in an earlier call that stopped while judging it.
            seconds = json.load(f)["train_seconds"]
        _log(f"reusing the finished pilot run in {workdir}")
    else:
        seconds, _ = _run(cmd, "pilot")
    curve = []
    for epoch in range(1, FLAGS.pilot_epochs + 1):
        weights = os.path.join(workdir, "checkpoints", f"epoch-{epoch:02d}.weights.h5")
        curve.append(_validation_robust_accuracy(workdir, weights))
        _log(f"pilot epoch {epoch}: APGD-CE validation robust accuracy {curve[-1]:.1%}")
    best = max(curve)
    chosen = next(i + 1 for i, v in enumerate(curve) if v >= best - FLAGS.pilot_tolerance)
    study.state["pilot"] = {"complete": True, "seconds": round(seconds, 1), "val_robust_acc": curve,
                            "chosen_epochs": chosen, "tolerance": FLAGS.pilot_tolerance,
                            "attack": "apgd_ce, 20 iterations, 1 restart, first 1,000 validation images"}
    study.save()
    return True


def _validation_robust_accuracy(workdir, weights):
    import keras

    from at2l_tf import data, evaluation, precision
    from at2l_tf.training.at2l_model import AT2LModel

    model = precision.to_float32(keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False))
    # The epoch checkpoints are the training wrapper's weights (the classifier inside it).
    AT2LModel(model, defense="none").load_weights(weights)
    ds = data.make_pipeline(data.load("mnist", "validation", max_examples=1000), batch_size=500)
    spec = evaluation.AttackSpec("apgd_ce", {"eps": 0.3, "steps": 20, "restarts": 1})
    return evaluation.robustness_report(lambda x: model(x, training=False), ds, [spec], verbose=0)["robust_accuracy"]


def evaluate(model_path, version, n):
    """AutoAttack `version` on the first `n` test images, in float32, per example."""
    import numpy as np

    from at2l_tf import data, evaluation, savedmodel
    from at2l_tf.evaluation import paired

    clf = savedmodel.load_classifier(model_path)
    ds = data.make_pipeline(data.load("mnist", "test", max_examples=n), batch_size=500)
    spec = evaluation.AttackSpec("autoattack", {"eps": 0.3, "version": version})
    started = time.time()
    report = evaluation.robustness_report(clf.model_fn, ds, [spec], num_examples=n, verbose=0, per_example=True)
    per = report.pop("per_example")
    return {
        "version": version, "num_examples": report["num_examples"],
        "clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
        "clean_correct": paired.encode(per["clean"]),
        # Robust: right on the clean image and under the attack (the report's worst case).
        "robust_correct": paired.encode(np.logical_and(per["clean"], per["autoattack"])),
        "seconds": round(time.time() - started, 1),
    }


def phase_runs(study, names, seeds, budget):
    epochs = FLAGS.run_epochs or (study.state["pilot"] or {}).get("chosen_epochs")
    if not epochs:
        _log("the runs wait for the pilot's choice of epochs (or --run_epochs)")
        return False
    study.state["epochs"] = epochs
    for seed in seeds:  # Seeds outermost: a study stopped early pairs what it finished.
        for name in names:
            key = f"{name}/s{seed}"
            if key in study.state["runs"]:
                continue
            if name not in study.state["tuning"] or (OBJECTIVES[name].get("variant_from")
                                                     and OBJECTIVES[name]["variant_from"] not in study.state["tuning"]):
                _log(f"{key} waits for its search")
                continue
            done = [r["run_seconds"] for r in study.state["runs"].values()]
            if not budget.allows(statistics.mean(done) if done else 0, f"run {key}"):
                return False
            workdir = os.path.join(FLAGS.study_dir, "runs", name, f"s{seed}")
            train_flags = tuned_train_flags(study, name)
            cmd = [sys.executable, "-m", "at2l_tf.train", f"--flagfile={FLAGS.recipe}", *train_flags,
                   f"--epochs={epochs}", f"--seed={seed}", f"--mixed_precision={FLAGS.precision}",
                   f"--workdir={workdir}", "--export_dir=", "--eval_examples=0"]
            started = time.time()
            _run(cmd, f"run {key}")
            with open(os.path.join(workdir, "results.json")) as f:
                results = json.load(f)
            model_path = os.path.join(workdir, "model.keras")
            run = {"objective": name, "seed": seed, "train_flags": train_flags, "epochs": epochs,
                   "train_seconds": results["train_seconds"], "precision": results.get("precision", {}).get("policy"),
                   "fast": evaluate(model_path, "fast", FLAGS.test_examples)}
            if seed in seeds[: FLAGS.standard_seeds]:
                run["standard"] = evaluate(model_path, "standard", FLAGS.test_examples)
            run["run_seconds"] = round(time.time() - started, 1)
            _log(f"{key}: clean {run['fast']['clean_accuracy']:.1%}, AutoAttack fast "
                 f"{run['fast']['robust_accuracy']:.1%}"
                 + (f", standard {run['standard']['robust_accuracy']:.1%}" if "standard" in run else "")
                 + f" ({run['run_seconds'] / 60:.1f} min)")
            study.state["runs"][key] = run
            study.save()
    return True


def report(state, replicates=2000):
    """Per objective mean ± std over seeds, and the paired difference to AT with its interval."""
    from at2l_tf.evaluation import paired

    by = {}
    for run in state["runs"].values():
        by.setdefault(run["objective"], {})[run["seed"]] = run
    rows = []
    ref = by.get(REFERENCE, {})
    for name in OBJECTIVES:
        runs = by.get(name)
        if not runs:
            continue
        clean = [r["fast"]["clean_accuracy"] for r in runs.values()]
        robust = [r["fast"]["robust_accuracy"] for r in runs.values()]
        row = {
            "objective": name, "label": OBJECTIVES[name]["label"], "seeds": sorted(runs),
            "clean": {"mean": statistics.mean(clean), "std": statistics.stdev(clean) if len(clean) > 1 else None},
            "robust": {"mean": statistics.mean(robust), "std": statistics.stdev(robust) if len(robust) > 1 else None},
            "standard": {str(s): r["standard"]["robust_accuracy"] for s, r in runs.items() if "standard" in r},
            "train_flags": next(iter(runs.values()))["train_flags"],
        }
        correct = _correct(runs)
        if name != REFERENCE and set(runs) & set(ref):
            row["vs_at"] = paired.paired_bootstrap(_correct(ref), correct, replicates=replicates)
        base = by.get(base_of(name), {})
        if base_of(name) != REFERENCE and set(runs) & set(base):
            # The triplet's effect on a base other than AT: paired with that base's runs.
            row["vs_base"] = paired.paired_bootstrap(_correct(base), correct, replicates=replicates)
            row["base"] = base_of(name)
        rows.append(row)
    return rows


def current_report(state):
    """The state's stored report if it was built from exactly the state's runs, else a new one.

    A sitting stopped by `--max_hours` adds runs without reporting; the report an
    earlier sitting stored is then stale and must not be printed or drawn.
    """
    stored = state.get("report")
    runs = sorted((r["objective"], int(r["seed"])) for r in state["runs"].values())
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
    above = [(r, v) for r, v in effects if v["low"] > 0]
    if above:
        best, v = max(above, key=lambda e: e[1]["difference"])
        others = "; ".join(f"{r['label']} − {OBJECTIVES[base_of(r['objective'])]['label']} {_ci(w)}"
                           for r, w in effects if r is not best)
        return (f"{best['label']} adds {_ci(v)} points of AutoAttack robust accuracy over "
                f"{OBJECTIVES[base_of(best['objective'])]['label']} ({size})"
                + (f"; the other triplet terms: {others}." if others else "."))
    listed = "; ".join(f"{r['label']} − {OBJECTIVES[base_of(r['objective'])]['label']} {_ci(v)}"
                       for r, v in effects)
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

    def pct(m):
        std = f" ± {100 * m['std']:.1f}" if m["std"] is not None else ""
        return f"{100 * m['mean']:.1f}%{std}"

    for r in rows:
        v = r.get("vs_at")
        diff = _ci(v) if v else "–"
        e = triplet_effect(r)
        effect = f"{_ci(e)} (− {OBJECTIVES[base_of(r['objective'])]['label']})" if e else "–"
        std = ", ".join(f"{100 * a:.1f}%" for a in r["standard"].values()) or "–"
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean'])} | **{pct(r['robust'])}** | "
                     f"{diff} | {effect} | {std} |")
    return "\n".join(lines)


def plot(state, png):
    from at2l_tf.evaluation import plots

    rows = current_report(state)
    entries = []  # Each objective against AT, then each triplet against a base other than AT.
    for key, base in (("vs_at", lambda r: REFERENCE), ("vs_base", lambda r: r["base"])):
        for r in rows:
            if key in r:
                v = r[key]
                entries.append({"label": f"{r['label']} − {OBJECTIVES[base(r)]['label']}",
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


def main(argv):
    if benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    if FLAGS.plot_from:
        with open(FLAGS.plot_from) as f:
            state = json.load(f)
        png = FLAGS.plot_png or os.path.splitext(FLAGS.plot_from)[0] + "_forest.png"
        _log(f"wrote {plot(state, png)}")
        return
    if not FLAGS.output_json:
        raise ConfigError("--output_json is required (the study's state)")
    names = FLAGS.objectives or list(OBJECTIVES)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objective {unknown[0]!r}; known: {', '.join(OBJECTIVES)}")
    if REFERENCE not in names:
        raise ConfigError(f"the objectives must include the reference {REFERENCE!r}")
    bad = [p for p in FLAGS.phases if p not in ("tune", "pilot", "runs", "report")]
    if bad:
        raise ConfigError(f"unknown phase {bad[0]!r}; known: tune, pilot, runs, report")
    seeds = []
    for s in FLAGS.seeds:
        if not s.isdigit():
            raise ConfigError(f"seeds must be non-negative integers, received {s!r}")
        seeds.append(int(s))
    for name in ("trials", "tune_train_examples", "tune_epochs", "pilot_epochs", "test_examples"):
        if getattr(FLAGS, name) < 1:
            raise ConfigError(f"{name} must be >= 1, received {name}={getattr(FLAGS, name)}")
    if not os.path.isfile(FLAGS.recipe):
        raise ConfigError(f"recipe flagfile does not exist: {FLAGS.recipe}")
    study = Study(FLAGS.output_json)
    study.state["settings"] = {
        "objectives": {n: OBJECTIVES[n] for n in names}, "seeds": seeds, "trials": FLAGS.trials,
        "tune_budget": {"train_examples": FLAGS.tune_train_examples, "epochs": FLAGS.tune_epochs},
        "recipe": os.path.relpath(FLAGS.recipe, ROOT), "eval_examples": FLAGS.test_examples,
        "mixed_precision": FLAGS.precision, "pilot_epochs": FLAGS.pilot_epochs,
    }
    budget = Budget(FLAGS.max_hours)
    ok = True
    if "tune" in FLAGS.phases:
        ok = phase_tune(study, names, budget)
    if ok and "pilot" in FLAGS.phases:
        ok = phase_pilot(study, budget)
    if ok and "runs" in FLAGS.phases:
        ok = phase_runs(study, names, seeds, budget)
    if "report" in FLAGS.phases and study.state["runs"]:
        study.state["report"] = report(study.state, FLAGS.bootstrap_replicates)
        png = FLAGS.plot_png or os.path.splitext(FLAGS.output_json)[0] + "_forest.png"
        if any("vs_at" in r for r in study.state["report"]):
            plot(study.state, png)
        print(markdown(study.state))
    study.state["complete"] = bool(ok) and all(
        f"{n}/s{s}" in study.state["runs"] for n in names for s in seeds)
    study.save()
    _log(f"wrote {FLAGS.output_json} ({'complete' if study.state['complete'] else 'to be continued'})")


if __name__ == "__main__":
    cli.run(main, "triplet_study")
