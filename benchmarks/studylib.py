"""What a study is, and the one driver that runs every study (`python benchmarks/study.py`).

A study is a configuration (`Study`), as big_vision's experiments are config
files run by one `train.py`: its **variants** (each a set of flags of `python -m
at2l_tf.train` on top of a shared **recipe**), its **seeds**, how every model is
**evaluated**, which **pairs** of variants it compares, and the markdown of its
table in benchmarks/README.md. Optionally, a KerasTuner search per variant
(`Tuning`) and a pilot run that chooses the epochs (`Pilot`). The configurations
are `benchmarks/studies/<name>.py`, each defining `STUDY`.

The driver runs, for every seed (outermost: a study stopped early pairs what it
finished) and variant, `python -m at2l_tf.train` in a subprocess (its own
TensorFlow and precision policy, the command a user can rerun), then judges the
model; a run whose workdir holds a finished run of the same configuration is
reused, not trained again. The study's JSON is its state: written atomically
after every step, it lets the study resume in later sittings (`--max_hours`
stops before a step that would not finish in time). The report gives, per
variant, mean ± std over seeds and, per pair, the paired difference (per seed;
with per-example correctness, a 95% interval from the bootstrap of
`at2l_tf.evaluation.paired`).

Adding a study is one file, `benchmarks/studies/<name>.py`, e.g.:

    from studylib import Evaluation, Study, Variant

    STUDY = Study(
        name="cosine",
        variants=(Variant("base", (), "TRADES"), Variant("cosine", ("--lr_schedule=cosine",), "+ cosine")),
        recipe=("--flagfile=flags/mnist_reference.flags", "--eval_examples=0"),
        seeds=(0, 1, 2),
        evaluation=Evaluation(autoattack="fast", examples=1000),
        pairs=(("base", "cosine"),),
    )

run by `python benchmarks/study.py --study=cosine --output_json=...`; without its own
`markdown`, its table is the generic one (per variant mean ± std over seeds, per pair
the per-seed differences and the paired interval).
"""

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import provenance
import runlib
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json
from at2l_tf.log import log

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def note(msg):
    """One line on stderr, `[study] msg`."""
    log(msg, prefix="study")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a study.

    Attributes:
        name: key in the JSON (`<name>/s<seed>`) and in `--variants`.
        flags: train-command flags on top of the study's recipe.
        label: its name in tables.
        tags: fields copied into each of its run records (what its table reads).
        tune: tune-command flags of its search (with `Study.tuning`); None: no search.
        design_from: a variant whose best trial's triplet design (features,
            distance, negative) it takes before its own search.
    """

    name: str
    flags: tuple = ()
    label: str = ""
    tags: dict = dataclasses.field(default_factory=dict)
    tune: Optional[tuple] = None
    design_from: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How each trained model is judged.

    `autoattack=None`: the train command's own final check (the recipe's
    `--eval_*` flags), as its `results.json` records it. Otherwise AutoAttack
    `autoattack` (`fast` | `standard`) at `eps` on the first `examples` MNIST
    test images, in float32, per-example correctness kept (which paired
    comparisons need); `also`: `{version: n}` judges the first n seeds also by
    that version (the masking check).
    """

    autoattack: Optional[str] = None
    examples: int = 1000
    eps: float = 0.3
    also: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One KerasTuner random search per variant with a `tune` (`python -m at2l_tf.tune`),
    the same number of trials for every variant; the best trial's `keys` go to its runs."""

    trials: int = 6
    train_examples: int = 10000
    epochs: int = 2
    keys: tuple = ("lambda1", "lambda2", "margin", "beta", "triplet_features", "norm", "triplet_negative")


@dataclasses.dataclass(frozen=True)
class Pilot:
    """A run of `variant` for `epochs`, each epoch's checkpoint judged by APGD-CE (20
    iterations) on the first 1,000 validation images; the study's epochs are the first
    within `tolerance` of the best (where validation robust accuracy stops rising)."""

    variant: str
    epochs: int = 12
    tolerance: float = 0.01


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: see the module docstring. `markdown(record)` prints its README table
    (from a committed JSON too); `report(record, replicates)` replaces the generic
    `report`; `plot(record, png)` draws a figure after the report."""

    name: str
    variants: tuple
    recipe: tuple = ()
    seeds: tuple = (0,)
    evaluation: Evaluation = Evaluation()
    pairs: tuple = ()
    tuning: Optional[Tuning] = None
    pilot: Optional[Pilot] = None
    markdown: Optional[Callable] = None
    report: Optional[Callable] = None
    plot: Optional[Callable] = None

    def variant(self, name):
        return next(v for v in self.variants if v.name == name)


# ----------------------------------------------------------------- the JSON state


def run_records(record):
    """A study JSON's runs: the list of the older scripts' JSONs as it is; the driver's (a dict
    keyed `<variant>/s<seed>`, whose keys the JSON sorts) by the study's order of variants, then seed."""
    runs = record.get("runs") or []
    if isinstance(runs, list):
        return list(runs)
    rank = {v["name"]: i for i, v in enumerate(record.get("settings", {}).get("variants", [])) if isinstance(v, dict)}
    return sorted(runs.values(), key=lambda r: (rank.get(r.get("variant"), len(rank)), int(r["seed"])))


class State:
    """The study's JSON: loaded at start, written atomically after every step, with one
    entry per sitting (machine, commit, seconds) and the provenance of the last."""

    def __init__(self, path, name):
        self.path = path
        self.started = time.time()
        self.data = {"benchmark": "study", "study": name, "tuning": {}, "pilot": None, "runs": {}, "report": None}
        if path and os.path.exists(path):
            with open(path) as f:
                self.data.update(json.load(f))
        self.data.setdefault("sittings", []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": provenance.machine(), "git_commit": provenance.git_commit()})

    def save(self):
        if not self.path:
            return
        self.data["sittings"][-1]["seconds"] = round(time.time() - self.started, 1)
        cores = os.cpu_count() or 1
        self.data["cpu_hours"] = round(sum(s.get("seconds", 0) for s in self.data["sittings"]) * cores / 3600, 2)
        self.data.update(provenance.provenance("study.py", self.started))
        atomic_write_json(self.path, self.data)


class Budget:
    """`--max_hours`: may a step of about `estimate` seconds still start?"""

    def __init__(self, hours):
        self.deadline = None if hours is None else time.time() + 3600 * hours

    def allows(self, done, what):
        estimate = statistics.mean(done) if done else 0
        if self.deadline is None or time.time() + estimate <= self.deadline:
            return True
        note(f"stopping before {what}: about {estimate / 60:.0f} min, "
             f"{max(self.deadline - time.time(), 0) / 60:.0f} min left of --max_hours")
        return False


# ----------------------------------------------------------------- the driver


class Driver:
    """Runs `study` into its `state` (a `State`, set after the checks of `__init__`): tune,
    pilot, runs, report (the phases it has)."""

    def __init__(self, study, *, variants, seeds, study_dir, train_flags=(), budget=None, replicates=2000):
        self.study, self.seeds, self.replicates = study, seeds, replicates
        self.state = State(None, study.name)  # Nothing tuned yet: the checks use the untuned flags.
        self.variants = [study.variant(n) for n in variants]
        self.study_dir, self.train_flags = study_dir, list(train_flags)
        self.budget = budget or Budget(None)
        given = {_flag_name(f) for f in self.train_flags}
        for v in self.variants:
            clash = given & {_flag_name(f) for f in v.flags}
            if clash:
                raise ConfigError(f"--{sorted(clash)[0]} is what the study varies (variant {v.name} "
                                  "sets it); drop it from the command")
        for v in self.variants:  # Every variant's configuration is checked before any work.
            parse_config(self.run_flags(v, seeds[0]) if seeds else [])

    def settings(self):
        """What the JSON records of the study as run: variants, recipe, seeds, evaluation, pairs."""
        study, names = self.study, [v.name for v in self.variants]
        return {
            "variants": [{"name": v.name, "label": v.label, "flags": list(v.flags)} for v in self.variants],
            "labels": {v.name: v.label for v in study.variants},
            "recipe": [*study.recipe, *self.train_flags], "seeds": self.seeds,
            # autoattack None: the train command's final check (the recipe's --eval_* flags).
            "evaluation": dataclasses.asdict(study.evaluation),
            "pairs": [list(p) for p in study.pairs if p[0] in names and p[1] in names],
            "tuning": dataclasses.asdict(study.tuning) if study.tuning else None,
            "pilot": dataclasses.asdict(study.pilot) if study.pilot else None,
            "replicates": self.replicates,
        }

    def run_flags(self, variant, seed, epochs=None):
        """The train-command flags of `variant`'s run with `seed` (tuned weights included)."""
        out = [*self.study.recipe, *self.train_flags, *self.variant_flags(variant)]
        if epochs and "epochs" not in {_flag_name(f) for f in self.train_flags}:
            out.append(f"--epochs={epochs}")
        workdir = os.path.join(self.study_dir, "runs", variant.name, f"s{seed}")
        return [*out, f"--seed={seed}", f"--workdir={workdir}", "--export_dir="]

    def variant_flags(self, variant):
        tuning = self.state.data["tuning"]
        out = list(variant.flags)
        best = (tuning.get(variant.design_from) or {}).get("best") if variant.design_from else None
        if best:  # Before that search has run (the configuration check), the untuned flags.
            # The search's hyperparameter `norm` is train's --triplet_distance.
            out += [f"--{k}={best[h]}" for k, h in (("triplet_features", "triplet_features"),
                                                     ("triplet_distance", "norm"),
                                                     ("triplet_negative", "triplet_negative"))]
        tuned = tuning.get(variant.name, {}).get("best") or {}
        keys = self.study.tuning.keys if self.study.tuning else ()
        flag = {"norm": "triplet_distance"}  # The search's name for train's flag.
        return out + [f"--{flag.get(k, k)}={v}" for k, v in tuned.items() if k in keys and v is not None]

    def tuned(self, variant):
        """Has `variant` (and the variant it takes its design from) finished its search?"""
        if not self.study.tuning:
            return True
        needs = [n for n in (variant.design_from, variant.name if variant.tune else None) if n]
        return all(self.state.data["tuning"].get(n, {}).get("complete") for n in needs)

    def run(self, phases):
        ok = True
        if self.study.tuning and "tune" in phases:
            ok = self.tune()
        if ok and self.study.pilot and "pilot" in phases:
            ok = self.pilot()
        if ok and "runs" in phases:
            ok = self.runs()
        if "report" in phases and self.state.data["runs"]:
            report_fn = self.study.report or report
            self.state.data["report"] = report_fn(self.state.data, self.replicates)
        self.state.data["complete"] = bool(ok) and all(
            f"{v.name}/s{s}" in self.state.data["runs"] for v in self.variants for s in self.seeds)
        self.state.save()
        return ok

    def tune(self):
        t, tuning = self.study.tuning, self.state.data["tuning"]
        for v in self.variants:
            if v.tune is None or tuning.get(v.name, {}).get("complete"):
                continue
            if v.design_from and not tuning.get(v.design_from, {}).get("complete"):
                note(f"tuning {v.name} waits for {v.design_from}'s search")
                continue
            if not self.budget.allows([x["seconds"] for x in tuning.values() if x.get("seconds")],
                                      f"the search of {v.name}"):
                return False
            tune_dir = os.path.join(self.study_dir, "tune", v.name)
            flags = [*self.study.recipe, *self.train_flags,
                     *(self.variant_flags(v) if v.design_from else v.flags), *v.tune]
            cmd = [sys.executable, "-m", "at2l_tf.tune", *flags, f"--max_train_examples={t.train_examples}",
                   f"--epochs={t.epochs}", f"--max_trials={t.trials}", f"--tune_dir={tune_dir}",
                   "--eval_examples=0", "--tuner=random"]
            seconds = _subprocess(cmd, f"search of {v.name}")
            with open(os.path.join(tune_dir, "summary.json")) as f:
                summary = json.load(f)
            best = summary["best"] or {}
            tuning[v.name] = {
                "complete": True, "seconds": round(seconds, 1),
                "trials": [{"tuned": x["tuned"], "val_robust_acc": x["val_robust_acc"], "status": x["status"]}
                           for x in summary["trials"]],
                "best": {k: x for k, x in best.get("hyperparameters", {}).items() if k in t.keys},
                "best_val_robust_acc": best.get("val_robust_acc"),
                "command": " ".join(cmd[1:]),
            }
            self.state.save()
        return True

    def pilot(self):
        p = self.study.pilot
        if (self.state.data["pilot"] or {}).get("complete") or "epochs" in map(_flag_name, self.train_flags):
            return True  # Chosen already, or given (--epochs).
        v = self.study.variant(p.variant)
        if not self.tuned(v):
            note(f"the pilot waits for {v.name}'s search")
            return False
        if not self.budget.allows([], "the pilot"):
            return False
        flags = self.run_flags(v, 0, p.epochs)
        workdir = os.path.join(self.study_dir, "pilot")
        flags[-2] = f"--workdir={workdir}"
        res = self.train(flags, "pilot")
        workdir = os.path.join(ROOT, workdir)
        curve = []
        for epoch in range(1, p.epochs + 1):
            weights = os.path.join(workdir, "checkpoints", f"epoch-{epoch:02d}.weights.h5")
            curve.append(runlib.validation_robust_accuracy(workdir, weights))
            note(f"pilot epoch {epoch}: APGD-CE validation robust accuracy {curve[-1]:.1%}")
        chosen = next(i + 1 for i, a in enumerate(curve) if a >= max(curve) - p.tolerance)
        self.state.data["pilot"] = {
            "complete": True, "seconds": res["train_seconds"], "val_robust_acc": curve,
            "chosen_epochs": chosen, "tolerance": p.tolerance,
            "attack": "apgd_ce, 20 iterations, 1 restart, first 1,000 validation images"}
        self.state.save()
        return True

    def runs(self):
        epochs = None
        if self.study.pilot:
            epochs = (self.state.data["pilot"] or {}).get("chosen_epochs")
            if not epochs and "epochs" not in {_flag_name(f) for f in self.train_flags}:
                note("the runs wait for the pilot's choice of epochs (or --epochs)")
                return False
            self.state.data["epochs"] = epochs
        runs = self.state.data["runs"]
        for seed in self.seeds:  # Seeds outermost: a study stopped early pairs what it finished.
            for v in self.variants:
                key = f"{v.name}/s{seed}"
                if key in runs:
                    continue
                if not self.tuned(v):
                    note(f"{key} waits for its search")
                    continue
                if not self.budget.allows([r["run_seconds"] for r in runs.values() if "run_seconds" in r],
                                          f"run {key}"):
                    return False
                runs[key] = self.run_one(v, seed, epochs)
                self.state.save()
        return True

    def run_one(self, variant, seed, epochs):
        started = time.time()
        flags = self.run_flags(variant, seed, epochs)
        res = self.train(flags, f"run {variant.name}/s{seed}")
        run = {"variant": variant.name, "seed": seed, **variant.tags, "train_flags": self.variant_flags(variant),
               "epochs": epochs or res["config"]["train"]["epochs"], "train_seconds": res["train_seconds"],
               "policy": (res.get("precision") or {}).get("policy"), "training": res.get("training")}
        ev = self.study.evaluation
        if ev.autoattack is None:  # The train command's final check.
            run.update(runlib.accuracies(res["test"]))
        else:
            model = os.path.join(ROOT, res["config"]["workdir"], "model.keras")
            run[ev.autoattack] = runlib.autoattack(model, ev.autoattack, ev.examples, ev.eps)
            run.update({k: run[ev.autoattack][k] for k in ("clean_accuracy", "robust_accuracy")})
            for version, n in ev.also.items():
                if seed in self.seeds[:n]:
                    run[version] = runlib.autoattack(model, version, ev.examples, ev.eps)
        run["run_seconds"] = round(time.time() - started, 1)
        note(f"{variant.name}/s{seed}: clean {run['clean_accuracy']:.1%}, robust {run['robust_accuracy']:.1%} "
             f"({run['run_seconds'] / 60:.1f} min)")
        return run

    def train(self, flags, what):
        """The results of the train run of `flags`: the finished one in its workdir, or a new run."""
        config = parse_config(flags)
        with in_root():
            done = runlib.finished_run(config)
        if done is None:
            _subprocess([sys.executable, "-m", "at2l_tf.train", *flags, "--verbose=2"], what)
            with open(os.path.join(ROOT, config.workdir, "results.json")) as f:
                done = json.load(f)
        return done


# Deprecated train flags and the flags they alias: either name sets the same thing.
_ALIASES = {"defense": "objective", "norm": "triplet_distance"}


def _flag_name(flag):
    name = flag.lstrip("-").split("=", 1)[0]
    return _ALIASES.get(name, name)


def _subprocess(cmd, what):
    """Runs a command of the package; returns its seconds (ConfigError if it fails)."""
    note(f"{what}: {' '.join(cmd[1:])}")
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr)  # stdout is the study's markdown.
    if proc.returncode != 0:
        raise ConfigError(f"{what} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return time.time() - started


@contextlib.contextmanager
def in_root():
    """In the repository's root, where the train runs are started: relative paths (a
    `--flagfile`, a workdir) mean the same to the driver as to them."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(cwd)


def parse_config(flags):
    """The validated `ExperimentConfig` that `python -m at2l_tf.train <flags>` would run
    (a copy of the train command's flags parses them, in the repository's root)."""
    from absl import flags as absl_flags

    from at2l_tf import train as train_command

    values = copy.deepcopy(absl_flags.FLAGS)
    values.unparse_flags()
    with in_root():
        try:
            values(["train", *flags])
        except absl_flags.Error as e:
            raise ConfigError(str(e)) from None
    return train_command.config_from_flags(values).validate()


def train_flag_names():
    """The flags of `python -m at2l_tf.train` (defined on absl's FLAGS when it is imported)."""
    from absl import flags as absl_flags

    from at2l_tf import train as train_command

    return [f.name for f in absl_flags.FLAGS.get_flags_for_module(train_command.__name__)]


# ----------------------------------------------------------------- the report


def mean_std(values, digits=None):
    """`{"mean", "std", "values"}` over seeds (std None for one value), rounded to `digits`."""
    r = (lambda x: x) if digits is None else (lambda x: round(x, digits))
    return {"mean": r(statistics.mean(values)) if values else None,
            "std": r(statistics.stdev(values)) if len(values) > 1 else None, "values": values}


def by_variant(runs, key="variant"):
    """`{variant: {seed: run}}` in the order the runs ran."""
    out = {}
    for r in runs:
        out.setdefault(r[key], {})[r["seed"]] = r
    return out


def correct(runs, version):
    """Per seed, the per-example robust correctness of `runs` (`{seed: run}`) under `version`."""
    from at2l_tf.evaluation import paired as paired_lib

    return {s: paired_lib.decode(r[version]["robust_correct"]) for s, r in runs.items()}


def paired(a, b, version=None, replicates=2000):
    """B − A over the seeds both ran: per-seed differences of robust accuracy and, with
    per-example correctness under `version`, the paired bootstrap interval."""
    from at2l_tf.evaluation import paired as paired_lib

    seeds = [s for s in b if s in a]
    out = {"per_seed": {str(s): b[s]["robust_accuracy"] - a[s]["robust_accuracy"] for s in seeds}}
    if version and seeds:
        out["bootstrap"] = paired_lib.paired_bootstrap(correct(a, version), correct(b, version), replicates=replicates)
    return out


def report(record, replicates=2000):
    """Per variant, mean ± std over seeds of clean and robust accuracy and training time; per
    pair of `settings.pairs`, the paired difference."""
    variants = by_variant(run_records(record))
    settings = record.get("settings", {})
    rows = [{"variant": name, "label": settings.get("labels", {}).get(name, name), "seeds": sorted(runs),
             **{m: mean_std([r[m] for r in runs.values()])
                for m in ("clean_accuracy", "robust_accuracy", "train_seconds")}}
            for name, runs in variants.items()]
    version = settings.get("evaluation", {}).get("autoattack")
    pairs = {f"{b} − {a}": paired(variants[a], variants[b], version, replicates)
             for a, b in settings.get("pairs", []) if a in variants and b in variants}
    return {"rows": rows, "pairs": pairs}


def _ci(v):
    return f"{100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"


def markdown(record):
    """The generic table: per variant mean ± std over seeds, then each pair's difference."""
    rep = report(record, replicates=record.get("settings", {}).get("replicates", 2000))

    def pct(m):
        return "–" if m["mean"] is None else f"{100 * m['mean']:.1f}%" + (
            f" ± {100 * m['std']:.1f}" if m["std"] is not None else "")

    lines = ["| variant | seeds | clean | **robust** | train s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean_accuracy'])} | **{pct(r['robust_accuracy'])}** "
              f"| {r['train_seconds']['mean']:.0f} |" for r in rep["rows"]]
    if rep["pairs"]:
        lines += ["", "| pair | per seed, points | paired 95% CI |", "| --- | --- | --- |"]
        lines += [f"| {name} | {', '.join(f'{100 * d:+.1f}' for d in p['per_seed'].values())} | "
                  f"{_ci(p['bootstrap']) if 'bootstrap' in p else '–'} |" for name, p in rep["pairs"].items()]
    return "\n".join(lines)
