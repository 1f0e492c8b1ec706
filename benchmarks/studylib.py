"""What a study is, and the one driver that runs every study (`python benchmarks/study.py`).

A study is a configuration, `benchmarks/studies/<name>.py` defining `STUDY` (a `Study`): its
variants (each a set of flags of `python -m at2l_tf.train` on top of a shared recipe), its
seeds, how every model is judged (`Evaluation`), which pairs of variants it compares, and the
markdown of its table in benchmarks/README.md; optionally a KerasTuner search per variant
(`Tuning`) and a pilot run that chooses the epochs (`Pilot`).

The driver runs, for every seed (outermost: a study stopped early pairs what it finished) and
variant, `python -m at2l_tf.train` in a subprocess (its own TensorFlow and precision policy,
the command a user can rerun), then judges the model in this process; a run whose workdir
holds a finished run of the same configuration is reused. The study's JSON is its state,
written atomically after every step, so a study resumes over sittings. The generic report
gives, per variant, mean ± std over seeds and, per pair, the paired difference (per seed;
with per-example correctness, a 95% interval from `at2l_tf.evaluation.paired`'s bootstrap).
A minimal study:

    STUDY = Study(name="cosine", recipe=("--flagfile=flags/mnist_reference.flags", "--eval_examples=0"),
                  variants=(Variant("base", (), "TRADES"), Variant("cosine", ("--lr_schedule=cosine",), "+ cosine")),
                  seeds=(0, 1, 2), evaluation=Evaluation(autoattack="fast"), pairs=(("base", "cosine"),))
"""

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import provenance
from at2l_tf import identity as run_identity
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json
from at2l_tf.log import log

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
_RUN = re.compile(r"\{run:(\w+)\}")  # In a variant's flag: the workdir of that variant's run, same seed.


def note(msg):
    """One line on stderr, `[study] msg`."""
    log(msg, prefix="study")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a study.

    Attributes:
        name: key in the JSON (`<name>/s<seed>`) and in `--variants`.
        flags: train-command flags on top of the study's recipe; `{run:<variant>}` in a
            flag is the workdir of that variant's run with the same seed (run before it).
        label: its name in tables.
        tags: fields copied into each of its run records (what its table reads).
        tune: tune-command flags of its search (with `Study.tuning`); None: no search.
        design_from: a variant whose best trial's triplet design (features,
            distance, negative) it takes before its own search.
        needs: variants whose runs (same seed) it uses besides those its flags name.
    """

    name: str
    flags: tuple = ()
    label: str = ""
    tags: dict = dataclasses.field(default_factory=dict)
    tune: Optional[tuple] = None
    design_from: Optional[str] = None
    needs: tuple = ()


@dataclasses.dataclass(frozen=True)
class Attack:
    """One column of an attack-suite `Evaluation`: registry attack `name` with `params`, the
    report's `label`, the table's `header`. `adaptive` is `evaluation.adaptive.adapt`'s mode:
    `none` attacks the whole model as it is (the naive, possibly masked figure), `auto` the
    model's defence layer's adaptive attack (BPDA through a thermometer code, EOT over a
    random layer); attacks on the codes (LS-PGA) run behind the encoding either way.
    `seeded`: `params` get the run's seed; `layer_only`: skipped for a model without a layer."""

    label: str
    header: str
    name: str
    params: dict = dataclasses.field(default_factory=dict)
    adaptive: str = "none"
    seeded: bool = False
    layer_only: bool = False


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How each trained model is judged, by the first of these that is set:

    * `judge(driver, variant, seed, config, results)`: the study's own, returning the run
      record's fields (`config`: the run's `ExperimentConfig`; `results`: its results.json);
    * `attacks`: the `Attack` columns, run by `evaluation.robustness_report` on the run's
      `model.keras` (its defence layer in front, in float32) on the first `examples` MNIST
      test images in batches of `batch_size`, Keras' seed set to the run's seed first, EOT
      over `eot_draws` draws; robust = worst case per example over the L∞ columns;
    * `autoattack` (`fast` | `standard`): AutoAttack at `eps` on the first `examples` test
      images, in float32, per-example correctness kept (which paired comparisons need);
      `also`: `{version: n}` judges the first n seeds also by that version (the masking check);
    * none: the train command's own final check (the recipe's `--eval_*` flags).
    """

    autoattack: Optional[str] = None
    examples: int = 1000
    eps: float = 0.3
    also: dict = dataclasses.field(default_factory=dict)
    attacks: tuple = ()
    batch_size: int = 250
    eot_draws: int = 20
    judge: Optional[Callable] = None

    def describe(self):
        """What the JSON records of it."""
        out = {"autoattack": self.autoattack, "examples": self.examples, "eps": self.eps, "also": self.also}
        if self.attacks:
            out.update(attacks=[dataclasses.asdict(a) for a in self.attacks], batch_size=self.batch_size,
                       eot_draws=self.eot_draws)
        if self.judge:
            out["judge"] = f"{self.judge.__module__}.{self.judge.__name__}"
        return out


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One KerasTuner random search per variant with a `tune` (`python -m at2l_tf.tune`),
    the same number of trials for every variant; the best trial's `keys` go to its runs."""

    trials: int = 6
    train_examples: int = 10000
    epochs: int = 2
    keys: tuple = ("lambda1", "lambda2", "margin", "beta", "triplet_features", "triplet_distance", "triplet_negative")


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
    (from a committed JSON too; default `table`); `report(record, replicates)` replaces the
    generic `report`; `plot(record, png)` draws its figures after the report (beside `png`)."""

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

    def table(self, record):
        """The study's table of `record`: its own `markdown`, else the attack suite's
        `attack_table` when its evaluation is one, else the generic `markdown`."""
        if self.markdown:
            return self.markdown(record)
        if self.evaluation.attacks:
            return attack_table(record, self.evaluation.attacks)
        return markdown(record)

    def variant(self, name):
        return next(v for v in self.variants if v.name == name)

    def needs(self, variant):
        """The variants whose runs `variant`'s run uses (`Variant.needs`, `{run:<name>}` in its flags)."""
        return (*variant.needs, *_RUN.findall(" ".join(variant.flags)))


# ----------------------------------------------------------------- the JSON state


def run_records(record):
    """A study JSON's runs: the list of the older scripts' JSONs as it is; the driver's (a dict
    keyed `<variant>/s<seed>`, whose keys the JSON sorts) by the study's order of variants, then seed."""
    runs = record.get("runs") or []
    if isinstance(runs, list):
        return list(runs)
    rank = {v["name"]: i for i, v in enumerate(record.get("settings", {}).get("variants", []))}
    return sorted(runs.values(), key=lambda r: (rank.get(r.get("variant"), len(rank)), int(r["seed"])))


class State:
    """The study's JSON: loaded at start, written atomically after every step, with one
    entry per sitting (machine, commit, seconds) and the provenance of the last."""

    def __init__(self, path, name):
        self.path = path
        self.started = time.time()
        self.data = {"benchmark": "study", "study": name, "tuning": {}, "pilot": None, "runs": {}, "report": None}
        if path and os.path.exists(path):
            with open(path) as f:  # Names of before the rename read as today's (`identity.renamed`).
                self.data.update(run_identity.renamed(json.load(f)))
        self.data.setdefault("sittings", []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": provenance.machine(), "git_commit": provenance.git_commit()})

    def save(self):
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
            parse_config(self.run_flags(v, seeds[0], check=True) if seeds else [])

    def settings(self):
        """What the JSON records of the study as run: variants, recipe, seeds, evaluation, pairs."""
        study, names = self.study, [v.name for v in self.variants]
        return {
            "variants": [{"name": v.name, "label": v.label, "flags": list(v.flags)} for v in self.variants],
            "labels": {v.name: v.label for v in study.variants},
            "recipe": [*study.recipe, *self.train_flags], "seeds": self.seeds,
            "evaluation": study.evaluation.describe(),
            "pairs": [list(p) for p in study.pairs if p[0] in names and p[1] in names],
            "tuning": dataclasses.asdict(study.tuning) if study.tuning else None,
            "pilot": dataclasses.asdict(study.pilot) if study.pilot else None,
            "replicates": self.replicates,
        }

    def workdir(self, name, seed):
        return os.path.join(self.study_dir, "runs", name, f"s{seed}")

    def run_flags(self, variant, seed, epochs=None, check=False):
        """The train-command flags of `variant`'s run with `seed` (tuned weights included); with
        `check`, without those naming another run (which may not exist yet)."""
        out = [*self.study.recipe, *self.train_flags, *self.variant_flags(variant)]
        if epochs and "epochs" not in {_flag_name(f) for f in self.train_flags}:
            out.append(f"--epochs={epochs}")
        out = [_RUN.sub(lambda m: self.workdir(m.group(1), seed), f) for f in out if not (check and _RUN.search(f))]
        return [*out, f"--seed={seed}", f"--workdir={self.workdir(variant.name, seed)}", "--export_dir="]

    def variant_flags(self, variant):
        tuning = self.state.data["tuning"]
        out = list(variant.flags)
        best = (tuning.get(variant.design_from) or {}).get("best") if variant.design_from else None
        if best:  # Before that search has run (the configuration check), the untuned flags.
            out += [f"--{k}={best[k]}" for k in ("triplet_features", "triplet_distance", "triplet_negative")]
        tuned = tuning.get(variant.name, {}).get("best") or {}
        keys = self.study.tuning.keys if self.study.tuning else ()
        return out + [f"--{k}={v}" for k, v in tuned.items() if k in keys and v is not None]

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
            summary = run_identity.read(os.path.join(tune_dir, "summary.json"))
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
        _, res = self.train(flags, "pilot")
        workdir = os.path.join(ROOT, workdir)
        curve = []
        for epoch in range(1, p.epochs + 1):
            weights = os.path.join(workdir, "checkpoints", f"epoch-{epoch:02d}.weights.h5")
            curve.append(validation_robust_accuracy(workdir, weights))
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
        config, res = self.train(self.run_flags(variant, seed, epochs), f"run {variant.name}/s{seed}")
        run = {"variant": variant.name, "seed": seed, **variant.tags, "train_flags": self.variant_flags(variant),
               "epochs": epochs or res["config"]["train"]["epochs"], "train_seconds": res["train_seconds"],
               "policy": (res.get("precision") or {}).get("policy"), "training": res.get("training")}
        ev = self.study.evaluation
        model = os.path.join(ROOT, res["config"]["workdir"], "model.keras")
        with in_root():
            if ev.judge:
                run.update(ev.judge(self, variant, seed, config, res))
            elif ev.attacks:
                run.update(attack_suite(ev, model, seed))
            elif ev.autoattack is None:  # The train command's final check.
                run.update(accuracies(res["test"]))
            else:
                run[ev.autoattack] = autoattack(model, ev.autoattack, ev.examples, ev.eps)
                run.update({k: run[ev.autoattack][k] for k in ("clean_accuracy", "robust_accuracy")})
                for version, n in ev.also.items():
                    if seed in self.seeds[:n]:
                        run[version] = autoattack(model, version, ev.examples, ev.eps)
        run["run_seconds"] = round(time.time() - started, 1)
        figures = ", ".join(f"{k.split('_')[0]} {run[k]:.1%}" for k in ("clean_accuracy", "robust_accuracy")
                            if run.get(k) is not None)
        note(f"{variant.name}/s{seed}: {figures} ({run['run_seconds'] / 60:.1f} min)")
        return run

    def train(self, flags, what):
        """`(config, results)` of the train run of `flags`: the finished one in its workdir, or a new run."""
        config = parse_config(flags)
        with in_root():
            done = finished_run(config)
        if done is None:
            _subprocess([sys.executable, "-m", "at2l_tf.train", *flags, "--verbose=2"], what)
            with open(os.path.join(ROOT, config.workdir, "results.json")) as f:
                done = json.load(f)
        return config, done


def _flag_name(flag):
    """The train flag `flag` sets (a deprecated alias, `train.DEPRECATED`, sets the flag it aliases)."""
    from at2l_tf.train import DEPRECATED

    name = flag.lstrip("-").split("=", 1)[0]
    return DEPRECATED.get(name, name)


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

    from at2l_tf import cli
    from at2l_tf import train as train_command

    values = copy.deepcopy(absl_flags.FLAGS)
    values.unparse_flags()
    with in_root():
        try:
            values(["train", *flags])
        except absl_flags.Error as e:
            raise ConfigError(cli.removed_flag_message(e, train_command.REMOVED) or str(e)) from None
        return train_command.config_from_flags(values).validate()


def train_flag_names():
    """The flags of `python -m at2l_tf.train` (defined on absl's FLAGS when it is imported)."""
    from absl import flags as absl_flags

    from at2l_tf import train as train_command

    return [f.name for f in absl_flags.FLAGS.get_flags_for_module(train_command.__name__)]


def finished_run(config):
    """The `results.json` of a finished train run of `config` in its workdir, else `None`.

    Finished: `results.json` and `model.keras` exist and the recorded configuration equals
    `config`'s (`at2l_tf.identity`; settings added to the configuration after the run was
    recorded count as their defaults)."""
    results = os.path.join(config.workdir, "results.json")
    if not (os.path.exists(results) and os.path.exists(os.path.join(config.workdir, "model.keras"))):
        return None
    done = run_identity.read(results)
    recorded = run_identity.flatten(done.get("config") or {}, type(config)().to_dict())
    if run_identity.differences(recorded, config.to_dict()):
        return None
    log(f"reusing the finished run in {config.workdir}", prefix="benchmarks")
    return done


# ----------------------------------------------------------------- evaluation


def evaluate_mnist(model_fn, specs, num_examples, *, batch_size, verbose=0, seed=None):
    """`evaluation.robustness_report` of `model_fn` under `specs` on the first `num_examples`
    MNIST test images; with `seed`, Keras' random seed is set just before the attacks run."""
    import keras

    from at2l_tf import data, evaluation

    test = data.make_pipeline(data.load("mnist", "test", max_examples=num_examples), batch_size=batch_size,
                              cache=False)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return evaluation.robustness_report(model_fn, test, specs, num_examples=num_examples, verbose=verbose)


def attack_suite(ev, model_path, seed):
    """The run record's fields from `ev.attacks` on the model at `model_path` (`Evaluation`)."""
    from at2l_tf import savedmodel
    from at2l_tf.evaluation import AttackSpec, adaptive

    clf = savedmodel.load_classifier(model_path)
    columns = [a for a in ev.attacks if clf.preprocessing is not None or not a.layer_only]
    specs = []
    for mode, group in itertools.groupby(columns, key=lambda a: a.adaptive):
        group = [AttackSpec(a.name, {**a.params, **({"seed": seed} if a.seeded else {})}, label=a.label)
                 for a in group]
        specs += adaptive.adapt(group, mode=mode, layer=clf.preprocessing, net_fn=clf.net_fn,
                                model_fn=clf.model_fn, eot_draws=ev.eot_draws)
    report = evaluate_mnist(clf.model_fn, specs, ev.examples, batch_size=ev.batch_size, verbose=1, seed=seed)
    return {"clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
            "report": report}


def accuracies(report):
    """Clean accuracy, robust accuracy (the worst case) and accuracy per attack of a
    robustness report (a train run's `test`)."""
    return {"clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
            "accuracy": {k: v["accuracy"] for k, v in report["attacks"].items()}}


def autoattack(model_path, version, n, eps):
    """AutoAttack `version` on the first `n` MNIST test images, in float32, per example."""
    import numpy as np

    from at2l_tf import data, evaluation, savedmodel
    from at2l_tf.evaluation import paired

    clf = savedmodel.load_classifier(model_path)
    ds = data.make_pipeline(data.load("mnist", "test", max_examples=n), batch_size=500)
    spec = evaluation.AttackSpec("autoattack", {"eps": eps, "version": version})
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


def validation_robust_accuracy(workdir, weights):
    """APGD-CE (20 iterations) robust accuracy on the first 1,000 MNIST validation images of the
    classifier in `workdir` with the training wrapper's `weights` (an epoch checkpoint)."""
    import keras

    from at2l_tf import data, evaluation, precision
    from at2l_tf.training.at2l_model import AT2LModel

    model = precision.to_float32(keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False))
    AT2LModel(model, objective="none").load_weights(weights)
    ds = data.make_pipeline(data.load("mnist", "validation", max_examples=1000), batch_size=500)
    spec = evaluation.AttackSpec("apgd_ce", {"eps": 0.3, "steps": 20, "restarts": 1})
    return evaluation.robustness_report(lambda x: model(x, training=False), ds, [spec], verbose=0)["robust_accuracy"]


# ----------------------------------------------------------------- the report


def mean_std(values, digits=None):
    """`{"mean", "std", "values"}` over seeds (std None for one value), rounded to `digits`."""
    r = (lambda x: x) if digits is None else (lambda x: round(x, digits))
    return {"mean": r(statistics.mean(values)) if values else None,
            "std": r(statistics.stdev(values)) if len(values) > 1 else None, "values": values}


def pct(m, scale=100, unit="%"):
    """A `mean_std` as `72.4% ± 5.8` (`–` without values)."""
    if m["mean"] is None:
        return "–"
    return f"{scale * m['mean']:.1f}{unit}" + (f" ± {scale * m['std']:.1f}" if m["std"] is not None else "")


def ci(v):
    """A paired comparison as `+d [low, high]`, in points."""
    return f"{100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"


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


def paired(a, b, version, replicates):
    """B − A over the seeds both ran: per-seed differences of robust accuracy and, with
    per-example correctness under `version`, the paired bootstrap interval."""
    from at2l_tf.evaluation import paired as paired_lib

    seeds = [s for s in b if s in a]
    out = {"per_seed": {str(s): b[s]["robust_accuracy"] - a[s]["robust_accuracy"] for s in seeds}}
    if version and seeds:
        out["bootstrap"] = paired_lib.paired_bootstrap(correct(a, version), correct(b, version), replicates=replicates)
    return out


def report(record, replicates=2000):
    """Per variant, mean ± std over seeds of clean and robust accuracy (where its evaluation gives
    them) and training time; per pair of `settings.pairs`, the paired difference."""
    variants = by_variant(run_records(record))
    settings = record.get("settings", {})
    rows = [{"variant": name, "label": settings.get("labels", {}).get(name, name), "seeds": sorted(runs),
             **{m: mean_std([r[m] for r in runs.values() if r.get(m) is not None])
                for m in ("clean_accuracy", "robust_accuracy", "train_seconds")}}
            for name, runs in variants.items()]
    version = settings.get("evaluation", {}).get("autoattack")
    pairs = {f"{b} − {a}": paired(variants[a], variants[b], version, replicates)
             for a, b in settings.get("pairs", []) if a in variants and b in variants}
    return {"rows": rows, "pairs": pairs}


def markdown(record):
    """The generic table: per variant mean ± std over seeds, then each pair's difference."""
    rep = report(record, replicates=record.get("settings", {}).get("replicates", 2000))
    lines = ["| variant | seeds | clean | **robust** | train s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {len(r['seeds'])} | {pct(r['clean_accuracy'])} | **{pct(r['robust_accuracy'])}** "
              f"| {r['train_seconds']['mean']:.0f} |" for r in rep["rows"]]
    if rep["pairs"]:
        lines += ["", "| pair | per seed, points | paired 95% CI |", "| --- | --- | --- |"]
        lines += [f"| {name} | {', '.join(f'{100 * d:+.1f}' for d in p['per_seed'].values())} | "
                  f"{ci(p['bootstrap']) if 'bootstrap' in p else '–'} |" for name, p in rep["pairs"].items()]
    return "\n".join(lines)


def attack_table(record, attacks):
    """The table of an attack-suite study: accuracy per row and `attacks` column, and the
    worst case. Rows: the runs, labelled (the retired preprocessing_tables.py's JSONs: `rows`)."""
    from mdtable import markdown_table

    if isinstance(record.get("rows"), dict):
        rows = [(name, row["report"]) for name, row in record["rows"].items()]
    else:
        labels = record["settings"]["labels"]
        rows = [(labels[r["variant"]], r["report"]) for r in run_records(record)]
    cells = []
    for name, rep in rows:
        entry = [rep["attacks"].get(a.label) for a in attacks]
        worst = rep["robust_accuracy"]
        cells.append([name, f"{rep['clean_accuracy']:.1%}",
                      *("–" if e is None else f"{e['accuracy']:.1%}" for e in entry),
                      "–" if worst is None else f"**{worst:.1%}**"])
    return "\n".join(markdown_table(["row", "clean", *(a.header for a in attacks), "**worst case**"], cells))
