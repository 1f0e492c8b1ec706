"""The one driver that runs every study (`Study`, `python benchmarks/study.py`).

For every seed (outermost: a study stopped early pairs what it finished) and variant, it runs
`python -m at2l_tf.train` in a subprocess (its own TensorFlow and precision policy, the command
a user can rerun), then judges the model in this process (`study_judge`); a run whose workdir
holds a finished run of the same configuration is reused. The study's JSON is its state
(`State`), written atomically after every step, so a study resumes over sittings; `Budget`
stops it before a step that would not finish in time.
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

import provenance
from absl import flags as absl_flags
from study_judge import accuracies, attack_suite, autoattack, validation_robust_accuracy
from study_report import report
from studylib import ROOT, RUN_REF, note

from at2l_tf import cli
from at2l_tf import identity as run_identity
from at2l_tf import train as train_command
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json
from at2l_tf.log import log


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
        here = provenance.machine()
        if self.data["runs"]:
            _same_cpu(path, self.data.get("sittings", []), here)
        self.data.setdefault("sittings", []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": here, "git_commit": provenance.git_commit()})

    def save(self):
        self.data["sittings"][-1]["seconds"] = round(time.time() - self.started, 1)
        cores = os.cpu_count() or 1
        self.data["cpu_hours"] = round(sum(s.get("seconds", 0) for s in self.data["sittings"]) * cores / 3600, 2)
        self.data.update(provenance.provenance("study.py", self.started))
        atomic_write_json(self.path, self.data)


def _cpu(machine):
    return f"{machine.get('cpu_model')} ({machine.get('cpu_family_model')})"


def _same_cpu(path, sittings, here):
    """Refuses to add runs to a study whose earlier sittings ran on another CPU: its pairs
    compare runs of one machine (oneDNN's kernels, and bfloat16's numerics, differ by CPU,
    and one seed of one recipe has moved by 7 points between two)."""
    others = sorted({_cpu(s["machine"]) for s in sittings} - {_cpu(here)})
    if others:
        raise ConfigError(f"{path} holds runs made on {', '.join(others)}; this machine is {_cpu(here)}, "
                          "and a study compares runs of one CPU: resume it there, or give this CPU "
                          "its own --output_json (and --study_dir)")


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


def run_seconds(runs, variant):
    """What a run of `variant` took: its own finished runs' seconds if it has any, else every
    run's (`Budget`'s estimate; a wide network's run takes 6x a small one's, so a mean over all
    runs would start one that overruns --max_hours by most of an hour)."""
    def seconds(rs):
        return [r["run_seconds"] for r in rs if "run_seconds" in r]
    return seconds(r for r in runs.values() if r.get("variant") == variant) or seconds(runs.values())


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
        out = [RUN_REF.sub(lambda m: self.workdir(m.group(1), seed), f)
               for f in out if not (check and RUN_REF.search(f))]
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
                if not self.budget.allows(run_seconds(runs, v.name), f"run {key}"):
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
    name = flag.lstrip("-").split("=", 1)[0]
    return train_command.DEPRECATED.get(name, name)


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
