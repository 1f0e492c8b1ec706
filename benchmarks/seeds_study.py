r"""Does the triplet term help? AT (λ2 = 0) vs AT²L vs TR over several seeds.

    python benchmarks/seeds_study.py --output_json=benchmarks/results/seeds_study_mnist.json
    python benchmarks/seeds_study.py --settings=readme,tuned --tuned_flags=runs/tune/best.flags \
        --training_attacks=pgd,fgsm --seeds=0,1,2

Every run is `python -m at2l_tf.train` on the shared flags (defaults: the
README's recipe — `mnist_small`, 3 epochs, PGD-5 at eps 0.3, λ1 = 1) with only
the objective, its λ2 / α / norm (by setting) and the seed changed, so every
defence gets the same budget and, per seed, the same data order and initial
weights. The training attacks: `pgd` (PGD-5, the default recipe) and `fgsm`
(the paper's Figures 1 and 3). Settings: `readme` (λ2 = 0.5, α = 0.5, L∞, the
README's), `tuned` (λ1, λ2, α, norm of `--tuned_flags`, e.g. a `best.flags` of
`python -m at2l_tf.tune`). Objectives: `at` (Eq. 1; λ2 = 0), `at2l` (Eq. 2),
`tr` (clean CE + triplet term). Each model is evaluated by the train command's
final check on the first `--eval_examples` test images: clean, FGSM, PGD-40 and
AutoAttack (`--eval_autoattack_version`, default `fast`: APGD-CE + APGD-T, 100
iterations); `robust` is their worst case per example. A finished run (same
configuration in its workdir) is not repeated, so the study resumes.

The JSON holds every run, and per (setting, attack, objective) the mean and the
sample standard deviation over seeds of clean and robust accuracy.
"""

import os
import statistics
import sys
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf import train as train_command  # noqa: E402  (defines every train flag)
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("settings", ["readme"], "readme | tuned (needs --tuned_flags).")
flags.DEFINE_string("tuned_flags", None, "A flagfile (best.flags) giving the tuned λ1, λ2, α, norm.")
flags.DEFINE_list("training_attacks", ["pgd"], "Training attacks: pgd (PGD-5) and/or fgsm.")
flags.DEFINE_list("objectives", ["at", "at2l", "tr"], "Objectives compared.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("output_json", None, "Where to write the study (atomically, after every run).")
flags.DEFINE_string("markdown_from", None, "Print the benchmarks/README.md table of this JSON and exit.")

README_SETTING = {"lambda1": 1.0, "lambda2": 0.5, "margin": 0.5, "norm": "linf"}
TUNED_KEYS = ("lambda1", "lambda2", "margin", "norm")


def tuned_setting(path):
    """λ1, λ2, α, norm from a flagfile (`--name=value` lines; comments ignored)."""
    if not path:
        raise ConfigError("--settings=tuned needs --tuned_flags=<tune_dir>/best.flags")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tuned flagfile does not exist: {path}")
    found = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                key, value = line[2:].split("=", 1)
                if key in TUNED_KEYS:
                    found[key] = value if key == "norm" else float(value)
    missing = [k for k in TUNED_KEYS if k not in found]
    if missing:
        raise ConfigError(f"{path} sets no {', '.join(missing)}")
    return found


def run_config(setting, values, attack, objective, seed):
    cfg = train_command.config_from_flags()
    cfg.train.defense = objective
    cfg.train.seed = seed
    cfg.train.lambda1 = values["lambda1"]
    cfg.train.lambda2 = 0.0 if objective == "at" else values["lambda2"]
    cfg.train.margin = values["margin"]
    cfg.train.norm = values["norm"]
    cfg.attack.name = attack
    cfg.workdir = os.path.join(FLAGS.workdir or "runs/seeds_study", setting, attack, f"{objective}_s{seed}")
    cfg.export_dir = None
    return cfg.validate()


def main(argv):
    if benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    settings = {}
    for name in FLAGS.settings:
        if name == "readme":
            settings[name] = dict(README_SETTING)
        elif name == "tuned":
            settings[name] = tuned_setting(FLAGS.tuned_flags)
        else:
            raise ConfigError(f"unknown setting {name!r}; known: readme, tuned")
    for attack in FLAGS.training_attacks:
        if attack not in ("pgd", "fgsm"):
            raise ConfigError(f"training attack must be pgd or fgsm, received {attack!r}")
    seeds = []
    for s in FLAGS.seeds:
        if not s.isdigit():
            raise ConfigError(f"seeds must be non-negative integers, received {s!r}")
        seeds.append(int(s))
    # Seed outermost: a study stopped early still compares every objective on
    # the seeds it finished.
    plan = [
        (setting, attack, objective, seed)
        for seed in seeds for setting in settings for attack in FLAGS.training_attacks
        for objective in FLAGS.objectives
    ]
    configs = {key: run_config(key[0], settings[key[0]], *key[1:]) for key in plan}  # All checked.
    started = time.time()
    runs = []
    for i, key in enumerate(plan, 1):
        cfg = configs[key]
        print(f"=== run {i}/{len(plan)}: {'/'.join(map(str, key))} ===", file=sys.stderr, flush=True)
        res = benchlib.train(cfg)
        runs.append({
            "setting": key[0], "training_attack": key[1], "objective": key[2], "seed": key[3],
            "lambda1": cfg.train.lambda1, "lambda2": cfg.train.lambda2,
            "margin": cfg.train.margin, "norm": cfg.train.norm,
            **benchlib.accuracies(res["test"]),
            "train_seconds": res["train_seconds"],
            "final_triplet": (res["history"].get("triplet") or [None])[-1],
        })
        _write(runs, settings, plan, started, complete=i == len(plan))
    _print_summary(summarize(runs))


def summarize(runs):
    """Mean and sample std over seeds, per (setting, training attack, objective)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["setting"], r["training_attack"], r["objective"]), []).append(r)
    out = []
    for (setting, attack, objective), rs in groups.items():
        row = {"setting": setting, "training_attack": attack, "objective": objective,
               "seeds": [r["seed"] for r in rs]}
        for metric in ("clean_accuracy", "robust_accuracy"):
            values = [r[metric] for r in rs]
            row[metric] = {
                "mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                "values": values,
            }
        out.append(row)
    return out


def _write(runs, settings, plan, started, complete):
    if not FLAGS.output_json:
        return
    c = train_command.config_from_flags()
    atomic_write_json(FLAGS.output_json, {
        "benchmark": "seeds_study",
        "complete": complete,
        "planned_runs": len(plan),
        "settings": settings,
        "budget": {
            "dataset": c.data.dataset, "model": c.model_name, "epochs": c.train.epochs,
            "batch_size": c.data.batch_size, "max_train_examples": c.data.max_train_examples,
            "eps": c.eps, "pgd_training_steps": c.attack.steps,
            "eval_examples": c.eval.num_examples, "eval_attacks": list(c.eval.attacks),
            "eval_autoattack_version": c.eval.autoattack_version,
            "robust": "per example, worst case over the eval attacks",
        },
        "summary": summarize(runs),
        "runs": runs,
        **benchlib.provenance("seeds_study.py", started),
    })


def markdown(record):
    """The benchmarks/README.md table: per setting, training attack and objective, mean ± std over seeds."""
    names = {"readme": "README", "tuned": "tuned"}
    rows = []
    groups = {}
    for r in record["runs"]:
        groups.setdefault((r["setting"], r["training_attack"], r["objective"]), []).append(r)

    def fmt(values):
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * mean:.1f}% ± {100 * std:.1f}"

    last = (None, None)
    for (setting, attack, objective), rs in groups.items():
        shown = (names.get(setting, setting), attack.upper()) if (setting, attack) != last else ("", "")
        last = (setting, attack)
        rows.append([
            *shown, objective.upper() if objective != "at2l" else "AT²L",
            fmt([r["clean_accuracy"] for r in rs]), fmt([r["accuracy"]["fgsm"] for r in rs]),
            fmt([r["accuracy"]["pgd"] for r in rs]), f"**{fmt([r['robust_accuracy'] for r in rs])}**",
        ])
    header = ["setting", "training attack", "objective", "clean", "FGSM", "PGD-40", "**robust**"]
    return "\n".join(benchlib.markdown_table(header, rows))


def _print_summary(summary):
    print(f"{'setting':<8} {'attack':<6} {'objective':<9} {'clean':>15} {'robust':>15}")
    for r in summary:
        def fmt(m):
            std = m["std"]
            return f"{m['mean']:.1%} ± {std:.1%}" if std is not None else f"{m['mean']:.1%}"
        print(f"{r['setting']:<8} {r['training_attack']:<6} {r['objective']:<9} "
              f"{fmt(r['clean_accuracy']):>15} {fmt(r['robust_accuracy']):>15}")


if __name__ == "__main__":
    cli.run(main, "seeds_study")
