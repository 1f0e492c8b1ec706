r"""Which training ingredient helps TRADES at a short budget? Each one on alone, all together, seeds, paired.

    python benchmarks/recipe_ablation.py --output_json=benchmarks/results/recipe_ablation_mnist.json
    python benchmarks/recipe_ablation.py ... --max_hours=2          # stop cleanly, resume later
    python benchmarks/recipe_ablation.py --markdown_from=benchmarks/results/recipe_ablation_mnist.json

A thin configuration of the triplet study's machinery (`triplet_study.py`): its
flags (`--output_json`, `--study_dir`, `--recipe`, `--seeds`, `--test_examples`,
`--precision`, `--max_hours`, `--bootstrap_replicates`, `--markdown_from`), its
JSON state (written atomically after every run, so the study resumes where it
stopped), its train subprocess, its evaluation (AutoAttack `fast` on the first
`--test_examples` test images, in float32, per-example correctness kept) and its
paired bootstrap over seeds and images. No search and no pilot: every variant
trains the recipe (`flags/mnist_trades_cpu.flags`: TRADES β 1, mnist_small,
its 10-step KL attack, 5 epochs, Adam 1e-3 cosine) with one change (`VARIANTS`),
seeds outermost, and is compared with plain TRADES on the same seeds and images.
"""

import functools
import json
import os
import statistics
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import triplet_study as machinery  # benchmarks/triplet_study.py: flags, state, runs, evaluation.  # isort: skip
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.log import log as _at2l_log  # noqa: E402

log = functools.partial(_at2l_log, prefix="recipe_ablation")

ROOT = machinery.ROOT
FLAGS = flags.FLAGS
FLAGS.set_default("recipe", os.path.join(ROOT, "flags", "mnist_trades_cpu.flags"))
FLAGS.set_default("study_dir", "runs/recipe_ablation")
flags.DEFINE_list("variants", None, "Variants to run (default all, in VARIANTS' order; the base is always run).")
flags.DEFINE_integer("epochs", None, "Override the recipe's epochs (smoke tests).")
flags.DEFINE_integer("max_train_examples", None, "Train on the first N images only (smoke tests).")

BASE = "trades"
# Each variant: the recipe plus these train flags. The ingredients' published settings:
# EMA 0.995 per step (Gowal et al. 2020), AWP γ 5e-3 with TRADES (Wu et al. 2020), started
# after one epoch here; the ε warm-up over the first of the 5 epochs.
VARIANTS = {
    "trades": {"label": "TRADES (recipe)", "flags": []},
    "ema": {"label": "+ weight averaging 0.995", "flags": ["--ema=0.995"]},
    "eps_warmup": {"label": "+ ε warm-up, 1 epoch", "flags": ["--eps_warmup_epochs=1"]},
    "awp": {"label": "+ AWP γ 5e-3 (from epoch 2)", "flags": ["--awp_gamma=0.005", "--awp_warmup_epochs=1"]},
    "wide_silu": {"label": "+ mnist_wide_silu", "flags": ["--model=mnist_wide_silu"]},
    "all": {"label": "all four", "flags": ["--ema=0.995", "--eps_warmup_epochs=1", "--awp_gamma=0.005",
                                           "--awp_warmup_epochs=1", "--model=mnist_wide_silu"]},
}


def train_flags(name):
    out = list(VARIANTS[name]["flags"])
    if FLAGS.epochs:
        out.append(f"--epochs={FLAGS.epochs}")
    if FLAGS.max_train_examples:
        out.append(f"--max_train_examples={FLAGS.max_train_examples}")
    return out


def phase_runs(study, names, seeds, budget):
    for seed in seeds:  # Seeds outermost: a study stopped early pairs what it finished.
        for name in names:
            key = f"{name}/s{seed}"
            if key in study.state["runs"]:
                continue
            done = [r["run_seconds"] for r in study.state["runs"].values()]
            if not budget.allows(statistics.mean(done) if done else 0, f"run {key}"):
                return False
            workdir = os.path.join(FLAGS.study_dir, name, f"s{seed}")
            cmd = [sys.executable, "-m", "at2l_tf.train", f"--flagfile={FLAGS.recipe}", *train_flags(name),
                   f"--seed={seed}", f"--mixed_precision={FLAGS.precision}", f"--workdir={workdir}",
                   "--export_dir=", "--eval_examples=0"]
            started = time.time()
            machinery._run(cmd, f"run {key}")
            with open(os.path.join(workdir, "results.json")) as f:
                results = json.load(f)
            run = {"objective": name, "seed": seed, "train_flags": train_flags(name),
                   "train_seconds": results["train_seconds"],
                   "precision": results.get("precision", {}).get("policy"),
                   "fast": machinery.evaluate(os.path.join(workdir, "model.keras"), "fast", FLAGS.test_examples)}
            run["run_seconds"] = round(time.time() - started, 1)
            log(f"{key}: clean {run['fast']['clean_accuracy']:.1%}, AutoAttack fast "
                 f"{run['fast']['robust_accuracy']:.1%} ({run['run_seconds'] / 60:.1f} min)")
            study.state["runs"][key] = run
            study.save()
    return True


def report(state, replicates=2000):
    """Per variant mean ± std over seeds, and its paired difference to the base with its interval."""
    from at2l_tf.evaluation import paired

    by = {}
    for run in state["runs"].values():
        by.setdefault(run["objective"], {})[run["seed"]] = run
    base = by.get(BASE, {})
    rows = []
    for name in VARIANTS:
        runs = by.get(name)
        if not runs:
            continue
        clean = [r["fast"]["clean_accuracy"] for r in runs.values()]
        robust = [r["fast"]["robust_accuracy"] for r in runs.values()]
        row = {"variant": name, "label": VARIANTS[name]["label"], "seeds": sorted(runs),
               "clean": {"mean": statistics.mean(clean), "std": statistics.stdev(clean) if len(clean) > 1 else None},
               "robust": {"mean": statistics.mean(robust), "std": statistics.stdev(robust) if len(robust) > 1 else None},
               "train_flags": next(iter(runs.values()))["train_flags"]}
        if name != BASE and set(runs) & set(base):
            row["vs_base"] = paired.paired_bootstrap(machinery._correct(base), machinery._correct(runs),
                                                     replicates=replicates)
        rows.append(row)
    return rows


def markdown(state):
    rows = state.get("report") or report(state)
    lines = ["| variant | seeds | clean | AutoAttack fast (robust) | − TRADES, paired [95% CI] |",
             "| --- | --- | --- | --- | --- |"]

    def pct(m):
        return f"{100 * m['mean']:.1f}%" + (f" ± {100 * m['std']:.1f}" if m["std"] is not None else "")

    for r in rows:
        v = r.get("vs_base")
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean'])} | **{pct(r['robust'])}** | "
                     f"{machinery._ci(v) if v else '–'} |")
    return "\n".join(lines)


def main(argv):
    if machinery.benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    if not FLAGS.output_json:
        raise ConfigError("--output_json is required (the study's state)")
    names = FLAGS.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    names = [BASE] + [n for n in names if n != BASE]
    seeds = []
    for s in FLAGS.seeds:
        if not s.isdigit():
            raise ConfigError(f"seeds must be non-negative integers, received {s!r}")
        seeds.append(int(s))
    for name in ("test_examples", "epochs", "max_train_examples"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, received {name}={value}")
    if not os.path.isfile(FLAGS.recipe):
        raise ConfigError(f"recipe flagfile does not exist: {FLAGS.recipe}")
    study = machinery.Study(FLAGS.output_json)
    study.state["benchmark"] = "recipe_ablation"
    study.state["settings"] = {
        "variants": {n: VARIANTS[n] for n in names}, "base": BASE, "seeds": seeds,
        "recipe": os.path.relpath(FLAGS.recipe, ROOT), "eval_examples": FLAGS.test_examples,
        "mixed_precision": FLAGS.precision, "epochs": FLAGS.epochs, "max_train_examples": FLAGS.max_train_examples,
    }
    ok = phase_runs(study, names, seeds, machinery.Budget(FLAGS.max_hours))
    if study.state["runs"]:
        study.state["report"] = report(study.state, FLAGS.bootstrap_replicates)
        print(markdown(study.state))
    study.state["complete"] = bool(ok) and all(f"{n}/s{s}" in study.state["runs"] for n in names for s in seeds)
    study.save()
    log(f"wrote {FLAGS.output_json} ({'complete' if study.state['complete'] else 'to be continued'})")


if __name__ == "__main__":
    cli.run(main, "recipe_ablation")
