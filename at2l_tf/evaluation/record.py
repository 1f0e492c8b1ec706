"""The robustness record of a SavedModel version: what was measured on it, shipped with it.

`evaluate --record` and the train command's final check append a summary of
their report to `<version>/assets/robustness.json`; `python -m at2l_tf.evaluate
--show=MODEL_DIR` prints it. TF Serving loads only what the graph references,
so the file changes nothing it serves, and it moves with the version directory
it describes: whoever serves version 3 can read how robust version 3 was
measured to be. The file:

    {"format": 1,
     "about": "...",
     "records": [
       {"evaluated_by": "evaluate", "date": "2026-11-25T12:05:32Z",
        "package_version": "0.1.0", "git_commit": "12f84e1...",
        "dataset": "mnist", "split": "test", "num_examples": 10000, "eps": 0.3,
        "clean_accuracy": 0.988, "robust_accuracy": 0.876,
        "robust_accuracy_attacks": ["fgsm", "pgd", "autoattack"],
        "attacks": {"autoattack": {"attack": "autoattack", "norm": "linf",
                                   "accuracy": 0.876, "params": {"eps": 0.3, ...}}, ...},
        "seed": 0, "adaptive": "auto", "preprocessing": "none",
        "gradient_masking_flags": []}]}

`robust_accuracy` is the share of the first `num_examples` images of `split`
classified correctly under every listed L-inf attack at radius `eps` (the
worst case per example). Records are appended, newest last; each says who
wrote it and when. The version's graph and weights are not touched (see
`savedmodel.model_digest`), and the file is replaced atomically.
"""

import datetime
import json
import os
import subprocess

import at2l_tf
from at2l_tf import fileio, savedmodel
from at2l_tf.errors import ConfigError

RECORD_FILE = os.path.join("assets", "robustness.json")
FORMAT = 1
ABOUT = (
    "Robustness measured on this SavedModel version. robust_accuracy: the share of the "
    "first num_examples images of the split classified correctly under every attack of "
    "robust_accuracy_attacks (L-inf, radius eps; per example, the worst case). Inputs "
    "outside [0, 1] are not covered (the serving signature refuses them unless exported "
    "with --serving_input_check=off). Newest record last."
)
# Report entry keys that are results or provenance, not attack parameters.
_RESULTS = frozenset({
    "attack", "norm", "error", "accuracy", "mean_linf", "mean_l2", "fooled",
    "fooled_mean_linf", "fooled_mean_l2", "source", "seconds", "stages", "adaptive", "search",
})


def make_record(report, *, evaluated_by, dataset, split, eps, seed, preprocessing=None,
                adaptive=None):
    """The record of a white-box `robustness_report`.

    Args:
        report: the report (`evaluation.robustness_report`, possibly with
            `flags` from the masking checks).
        evaluated_by: `"evaluate"` or `"train"`.
        dataset, split, eps, seed: what was evaluated, at which radius, with
            which seed.
        preprocessing, adaptive: the defence layer's name and the adaptive
            mode the gradient attacks ran with, if any.

    Returns:
        A JSON-ready dict (module docstring).
    """
    attacks = {}
    for label, entry in report["attacks"].items():
        attacks[label] = {
            "attack": entry["attack"],
            "norm": entry["norm"],
            "accuracy": entry["accuracy"],
            "params": {k: v for k, v in entry.items() if k not in _RESULTS},
        }
        if entry.get("adaptive"):
            attacks[label]["adaptive"] = entry["adaptive"]
    record = {
        "evaluated_by": evaluated_by,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "package_version": at2l_tf.__version__,
        "git_commit": git_commit(),
        "dataset": dataset,
        "split": split,
        "num_examples": report["num_examples"],
        "eps": eps,
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": report.get("robust_accuracy"),
        "robust_accuracy_attacks": list(report.get("robust_accuracy_attacks", [])),
        "attacks": attacks,
        "seed": seed,
        "preprocessing": preprocessing,
        "adaptive": adaptive,
        # The masking checks that fired; None: not checked (the train command's check).
        "gradient_masking_flags": (
            [f["check"] for f in report["flags"]] if "flags" in report else None
        ),
    }
    if "attack_precision" in report:  # The attacks searched in bfloat16 (verdicts float32).
        record["attack_precision"] = report["attack_precision"]
    return record


def record_path(model_dir):
    """`<version>/assets/robustness.json` of a SavedModel export root or version."""
    if os.path.isfile(model_dir):
        raise ConfigError(
            f"a robustness record goes into a SavedModel version directory, not a file: {model_dir}"
        )
    return os.path.join(savedmodel.resolve_saved_model_dir(model_dir), RECORD_FILE)


def read_records(model_dir):
    """The records of the SavedModel at `model_dir` (root or version), oldest first; [] if none."""
    path = record_path(model_dir)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            return list(json.load(f)["records"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the robustness record {path}: {e}") from None


def write_record(model_dir, record):
    """Appends `record` to the version's `assets/robustness.json`, atomically; returns its path."""
    path = record_path(model_dir)
    records = read_records(model_dir) + [record]
    fileio.atomic_write_json(path, {"format": FORMAT, "about": ABOUT, "records": records})
    return path


def format_records(model_dir):
    """The records of `model_dir` as text: one summary line each, then the file itself."""
    path = record_path(model_dir)
    records = read_records(model_dir)
    if not records:
        raise ConfigError(
            f"no robustness record in {path} (written by `evaluate --record` and by the train "
            "command's final check)"
        )
    lines = [f"{path}: {len(records)} record(s), newest last"]
    for r in records:
        robust = r.get("robust_accuracy")
        robust = "n/a" if robust is None else f"{robust:.2%}"
        lines.append(
            f"  {r['date']} {r['evaluated_by']}: robust {robust} (clean "
            f"{r['clean_accuracy']:.2%}) at eps={r['eps']:.4g} on the first {r['num_examples']} "
            f"{r['dataset']} {r['split']} images; attacks {', '.join(r['robust_accuracy_attacks'])}"
            + (f"; masking flags: {', '.join(r['gradient_masking_flags'])}"
               if r.get("gradient_masking_flags") else "")
        )
    with open(path) as f:
        lines.append(f.read().rstrip())
    return "\n".join(lines)


def git_commit(directory=None):
    """The commit of the git checkout holding `directory` (default: the package's),
    `+dirty` if tracked Python files differ from it (a results file or the README
    being edited does not change what ran); `None` outside a git checkout."""
    here = directory or os.path.dirname(os.path.abspath(at2l_tf.__file__))

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py")
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + ("+dirty" if changed else "")


__all__ = ["RECORD_FILE", "format_records", "git_commit", "make_record", "read_records",
           "record_path", "write_record"]
