"""What a search reports: a line per trial start and end on stderr, `summary.json` and
`best.flags` after every trial, and the table of all trials at the end.
"""

import json
import os
import time

from at2l_tf import fileio, identity
from at2l_tf.log import log
from at2l_tf.tune import space
from at2l_tf.tune.space import trial_values
from at2l_tf.tune.settings import BEST_FLAGS_FILE, SUMMARY_FILE, tuner_seed

# Reported for every search; the other axes of `space.ALL_HYPERPARAMETERS` when searched.
# Hyperparameters are named as the train flags they set.
HYPERPARAMETERS = ("lambda1", "lambda2", "margin", "triplet_distance")
SYMBOLS = {"lambda1": "λ1", "lambda2": "λ2", "margin": "α", "triplet_distance": "distance",
           "objective": "objective", "beta": "β", "triplet_features": "features", "triplet_negative": "negative"}


class Reporter:
    """Progress lines, `summary.json` and `best.flags` of one search."""

    def __init__(self, settings, base, objective_attack, record, base_flags, hypermodel):
        self.settings, self.base, self.objective_attack = settings, base, objective_attack
        self.record, self.base_flags, self.hypermodel = record, base_flags, hypermodel
        self.started, self.seconds = {}, {}
        self.ran = []  # Trials this process ran (a worker's log).
        self.writes = True  # summary.json and best.flags (False on a worker).
        # λ1, λ2, α, distance always; the objective, β, features, negative when searched.
        self.names = reported_names(record["tuned"])

    def load_durations(self):
        # Seconds of the trials of earlier invocations, kept across resumes.
        try:
            with open(os.path.join(self.settings.tune_dir, SUMMARY_FILE)) as fh:
                old = json.load(fh)
            self.seconds.update({t["trial_id"]: t.get("seconds") for t in old.get("trials", [])})
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def begin(self, trial, on=None):
        """Logs a trial's start (`on`: the worker it was handed to, on a chief)."""
        self.started[trial.trial_id] = time.time()
        hp_values = trial.hyperparameters.values
        values = self.effective(trial_values(hp_values))
        budget = ""
        if hp_values.get("tuner/epochs"):  # Hyperband
            first = hp_values.get("tuner/initial_epoch", 0) + 1
            budget = f" (epochs {first}-{hp_values['tuner/epochs']}"
            budget += f", from trial {hp_values['tuner/trial_id']})" if "tuner/trial_id" in hp_values else ")"
        where = f" on {on}" if on else ""
        log(f"trial {trial.trial_id} start{budget}{where}: {_format_values(values, self.used(values))}")

    def end(self, tuner, trial, on=None):
        """Logs a trial's end and (unless on a worker) rewrites the outputs."""
        trial = tuner.oracle.get_trial(trial.trial_id)
        if trial.trial_id in self.started:
            self.seconds[trial.trial_id] = round(time.time() - self.started.pop(trial.trial_id), 1)
        self.ran.append(trial.trial_id)
        secs = self.seconds.get(trial.trial_id)
        took = f" in {secs:.0f} s" if secs is not None else ""
        took += f" on {on}" if on else ""
        if trial.status == "COMPLETED" and trial.score is not None:
            adv = _metric(trial, "val_adv_acc")
            extra = f", val_adv_acc={adv:.4f} (training attack)" if adv is not None else ""
            log(
                f"trial {trial.trial_id} end{took}: {space.OBJECTIVE_METRIC}={trial.score:.4f} "
                f"at epoch {_best_epoch(trial)}{extra}"
            )
        else:
            log(f"trial {trial.trial_id} {str(trial.status).lower()}{took}: {_last_line(trial.message)}")
        if self.writes:
            self.write(tuner)

    def effective(self, values):
        """λ1, λ2, α, distance (and the searched axes) a trial trains with: its tuned
        values where its objective uses them, else the base config's."""
        train = self.hypermodel.config_for(values).train
        return {n: getattr(train, n) for n in self.names}

    def used(self, values):
        """The reported names the trial's objective uses (the objective first)."""
        return used_names(values, self.base.train.objective, self.base.train.lambda2)

    def summarize(self, tuner):
        oracle = tuner.oracle
        order = [t for t in oracle.start_order if t in oracle.trials]
        order += sorted(t for t in oracle.trials if t not in order)
        trials = []
        for tid in order:
            trial = oracle.trials[tid]
            hp_values = trial.hyperparameters.values
            tuned = trial_values(hp_values)
            entry = {
                "trial_id": tid,
                "status": str(trial.status),
                "hyperparameters": self.effective(tuned),
                "tuned": {n: tuned[n] for n in space.ALL_HYPERPARAMETERS if n in tuned},
                space.OBJECTIVE_METRIC: trial.score,
                "best_epoch": _best_epoch(trial) if trial.score is not None else None,
                "metrics": {
                    name: trial.metrics.get_last_value(name) for name in sorted(trial.metrics.metrics)
                },
                "seconds": self.seconds.get(tid),
            }
            if "tuner/epochs" in hp_values:
                entry["epochs"] = hp_values["tuner/epochs"]
            if trial.status != "COMPLETED" and trial.message:
                entry["message"] = _last_line(trial.message)
            trials.append(entry)
        scored = [t for t in trials if t["status"] == "COMPLETED" and t[space.OBJECTIVE_METRIC] is not None]
        best = max(scored, key=lambda t: t[space.OBJECTIVE_METRIC], default=None)
        summary = {
            "tune_dir": self.settings.tune_dir,
            "tuner": self.settings.tuner,
            "max_trials": self.settings.max_trials,
            "executions_per_trial": self.settings.executions_per_trial,
            "seed": self.base.train.seed,
            "tuner_seed": tuner_seed(self.base.train.seed),
            "objective": self.record["objective"],
            "search_space": self.record["search_space"],
            "tuned": self.record["tuned"],
            "base_config": self.base.to_dict(),
            "trials": trials,
            "best": None,
        }
        if best is not None:
            summary["best"] = {
                "trial_id": best["trial_id"],
                space.OBJECTIVE_METRIC: best[space.OBJECTIVE_METRIC],
                "best_epoch": best["best_epoch"],
                "hyperparameters": best["hyperparameters"],
                "flagfile": os.path.join(self.settings.tune_dir, BEST_FLAGS_FILE) if self.base_flags else None,
            }
        return summary

    def write(self, tuner):
        """Writes `summary.json` and (with a finished trial and base flags) `best.flags`."""
        summary = self.summarize(tuner)
        if summary["best"] is not None and self.base_flags:
            fileio.atomic_write_text(summary["best"]["flagfile"], self.best_flags_text(summary))
        fileio.atomic_write_json(os.path.join(self.settings.tune_dir, SUMMARY_FILE), summary)
        return summary

    def best_flags_text(self, summary):
        best, o = summary["best"], self.objective_attack
        path = os.path.join(self.settings.tune_dir, BEST_FLAGS_FILE)
        n_done = sum(1 for t in summary["trials"] if t["status"] == "COMPLETED")
        header = [
            f"# python -m at2l_tf.train --flagfile={path}",
            f"# Best of {n_done} finished trials of a {self.settings.tuner} search "
            f"(python -m at2l_tf.tune --tune_dir={self.settings.tune_dir}): trial {best['trial_id']},",
            f"# {space.OBJECTIVE_METRIC} = {best[space.OBJECTIVE_METRIC]:.4f} at epoch {best['best_epoch']} under "
            f"{o.describe(self.base.eps)} on the first {o.num_examples} validation images",
            f"# (seed {self.base.train.seed}; not measured on the test split yet).",
            f"# {_format_values(best['hyperparameters'], self.used(best['hyperparameters']))}; "
            "the other flags are the search's base flags.",
        ]
        values = best["hyperparameters"]
        lines = []
        for flag, text in self.base_flags.items():
            if flag in values:
                text = _flag_line(flag, values[flag], text)
            if text:
                lines.append(text)
        for name in self.names:  # In case the base flags did not carry one.
            if name not in self.base_flags and values[name] is not None:
                lines.append(_flag_line(name, values[name]))
        return "\n".join(header + lines) + "\n"


def reported_names(tuned):
    """The hyperparameters a search reports: λ1, λ2, α, distance, and the other searched axes."""
    return tuple(n for n in space.ALL_HYPERPARAMETERS if n in HYPERPARAMETERS or n in tuned)


def used_names(values, base_objective, base_lambda2):
    """The names of `values` that the trial's objective (`values["objective"]`, else the base's) uses."""
    used = ("objective",) + space.used_by(values.get("objective", base_objective), base_lambda2)
    return tuple(n for n in values if n in used)


def format_table(summary):
    """The trials as a fixed-width table, the best one marked with `*` (`summary`: a
    `summary.json`, old names `identity.renamed`)."""
    summary = identity.renamed(summary)
    best = (summary.get("best") or {}).get("trial_id")
    train = summary["base_config"]["train"]
    names = reported_names(summary["tuned"])
    header = ["", "trial", "status", *(SYMBOLS[n] for n in names), space.OBJECTIVE_METRIC, "val_adv_acc",
              "val_acc", "epoch", "seconds"]
    rows = []
    for t in summary["trials"]:
        hp, m = t["hyperparameters"], t["metrics"]
        used = space.used_by(hp.get("objective", train["objective"]), train.get("lambda2"))  # "-": unused.
        rows.append([
            "*" if t["trial_id"] == best else "",
            t["trial_id"],
            t["status"],
            *(_cell(hp[n], n in used or n == "objective") for n in names),
            _pct(t[space.OBJECTIVE_METRIC]),
            _pct(m.get("val_adv_acc")),
            _pct(m.get("val_acc")),
            "-" if t["best_epoch"] is None else str(t["best_epoch"]),
            "-" if t["seconds"] is None else f"{t['seconds']:.0f}",
        ])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    left = 3 + len(names)  # Marker, trial, status and the hyperparameters; numbers to the right.
    lines = [" ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header] + rows]
    o = summary["objective"]
    lines.append(
        f"({space.OBJECTIVE_METRIC}: accuracy under {o['name']}, {o['steps']} steps, {o['restarts']} "
        f"restart(s), eps {o['eps']:.4g}, first {o['num_examples']} validation images, best epoch "
        f"of each trial; val_adv_acc: the training attack, whole validation split)"
    )
    return "\n".join(lines)


def _best_epoch(trial):
    # KerasTuner counts the best step from the fit's first epoch; a Hyperband
    # trial that continues another starts at `tuner/initial_epoch`.
    return trial.hyperparameters.values.get("tuner/initial_epoch", 0) + trial.best_step + 1


def _metric(trial, name):
    try:
        return trial.metrics.get_last_value(name)
    except (KeyError, ValueError):
        return None


def _pct(v):
    return "-" if v is None else f"{v:.2%}"


def _format_values(values, names=HYPERPARAMETERS):
    return " ".join(f"{SYMBOLS[n]}={_cell(values[n])}" for n in names)


def _flag_line(name, value, default=""):
    """`--name=value` (floats by repr, to round-trip); `default` when value is None."""
    if value is None:
        return default
    return f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}"


def _cell(value, used=True):
    if not used or value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_line(message):
    lines = [line.strip() for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


__all__ = ["HYPERPARAMETERS", "Reporter", "SYMBOLS", "format_table", "reported_names", "used_names"]
