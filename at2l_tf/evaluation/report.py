"""Robustness measurement: clean error and error under attacks, white-box or transferred.

`robustness_report` walks a batched dataset once. For every batch it crafts
each attack's adversarial examples on a *source* model (the target itself for
white-box, another model for transfer / black-box, the paper's Fig. 2) and
counts the target's errors on them. Error rates are over all evaluated
examples (an example the target already misclassifies counts as an error).
For every attack it also reports the mean L-inf and L2 norm of the
perturbation, which is the figure of merit of minimal-norm attacks (C&W,
DeepFool). The plain means are over all evaluated examples, so an example the
attack leaves unchanged (C&W returns `x` where it finds nothing) counts as 0;
`fooled_mean_l2` / `fooled_mean_linf` average only over the examples the
attack *flips* (clean prediction right, adversarial prediction wrong), the
figure DeepFool's and C&W's papers report.

**Worst case.** `robust_accuracy` is the share of examples classified correctly
under *every* L-inf attack that was run (per example, not the minimum of the
per-attack accuracies, which overstates it when attacks fool different
examples). It is the figure to quote; the per-attack rows show which attack did
the damage. L2 attacks (C&W, DeepFool) are minimal-norm, not eps-bounded, and
do not enter it. `black_box_only_fooled` counts the examples that survived every
white-box L-inf attack but fell to a black-box one (Square): above 0, the
gradients the white-box attacks followed were misleading (gradient masking).
AutoAttack, which runs Square itself, is on neither side of that comparison.

Each (attack, source) pair is compiled once with `tf.function`, so the attack
runs as one graph per batch shape; attacks that compile their own pieces and
work on subsets (APGD, Square's early stop, AutoAttack) run eagerly around them.
"""

import contextlib
import dataclasses
import functools
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from at2l_tf import attacks


@dataclasses.dataclass
class AttackSpec:
    """An attack to run: registry name, parameters, and a table label.

    Attributes:
        name: registry name (`fgsm`, `pgd`, ...).
        params: keyword parameters (`eps`, `steps`, ...); `None` values = defaults.
        label: key in the report; default `name`.
        model_fn: what the attack runs on, if not the target itself: an
            adaptive wrapper of it (BPDA, EOT) or the network behind its
            defence layer (LS-PGA). The adversarials are always judged on the
            target. White-box only (ignored for transfer sources).
        adaptive: how `model_fn` relates to the target, recorded in the
            report (`"bpda"`, `"eot(20)"`, `"behind thermometer"`).
    """

    name: str
    params: dict = dataclasses.field(default_factory=dict)
    label: str = None
    model_fn: object = dataclasses.field(default=None, compare=False, repr=False)
    adaptive: str = None

    def __post_init__(self):
        attacks.get_entry(self.name)  # Unknown names fail here, before any work.
        self.label = self.label or self.name


def _run_attack(attack_fn, model_fn, x, y):
    return attack_fn(model_fn, x, y)


def _compiled(attack_fn, model_fn):
    # A `partial`, not a closure: TensorFlow counts traces per code object, so
    # one trace for each of several closures of the same `def` would set off
    # its "excessive retracing" warning although nothing is retraced.
    run = functools.partial(_run_attack, attack_fn, model_fn)
    if not getattr(attack_fn, "compile", True):
        return run
    return tf.function(run, reduce_retracing=True)


def robustness_report(
    model_fn,
    dataset,
    attack_specs,
    *,
    sources=None,
    num_examples=None,
    verbose=1,
    per_example=False,
):
    """Measures clean error, error under each attack, and the worst case over them.

    Args:
        model_fn: the target; float images -> logits.
        dataset: batched `(images, labels)`.
        attack_specs: list of `AttackSpec`.
        sources: optional `{name: model_fn}` of source models for transfer
            attacks; each attack is then crafted on every source (labels
            `"<attack>@<source>"` when there is more than one source) and
            never on the target.
        num_examples: stop after this many examples (default: the whole dataset).
        verbose: 1 shows a progress bar on stderr (stdout stays free for
            the table), 0 is silent.
        per_example: also return `"per_example": {"clean": [bool], label:
            [bool]}`, whether each example is classified correctly.

    Returns:
        A JSON-ready dict: `{"num_examples", "clean_error", "clean_accuracy",
        "attacks": {label: {"attack", "norm", "error", "accuracy", "mean_linf",
        "mean_l2", "fooled", "fooled_mean_linf", "fooled_mean_l2", "source",
        "seconds", <params>}}}`; `fooled` is the fraction of examples the
        attack flips, the `fooled_mean_*` norms are averaged over them
        (`None` when there are none). `robust_accuracy` (worst case per
        example over the L-inf rows, named in `robust_accuracy_attacks`; `None`
        without such rows) and `black_box_only_fooled` (`None` unless both
        white-box and black-box L-inf attacks ran on the target) complete it.

    Raises:
        ValueError: if two attacks have the same label (their counts would
            be added up), or the dataset yields no example.
    """
    runs = []  # (label, spec, source name, compiled attack, attack_fn)
    source_items = list((sources or {"target": None}).items())
    for spec in attack_specs:
        attack_fn = attacks.make_attack(spec.name, **spec.params)
        for src_name, src_fn in source_items:
            label = spec.label if len(source_items) == 1 else f"{spec.label}@{src_name}"
            if any(label == r[0] for r in runs):
                raise ValueError(
                    f"two attacks have the label {label!r}; give them distinct "
                    "`AttackSpec.label`s"
                )
            compiled = _compiled(attack_fn, src_fn or spec.model_fn or model_fn)
            runs.append((label, spec, src_name, compiled, attack_fn))
    target = tf.function(model_fn, reduce_retracing=True)

    n = 0
    clean_wrong = 0
    correct = {"clean": []}
    correct.update({label: [] for label, *_ in runs})
    counters = ("wrong", "linf", "l2", "fooled", "fooled_linf", "fooled_l2", "seconds")
    stats = {label: dict.fromkeys(counters, 0) for label, *_ in runs}
    total = num_examples
    cardinality = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    if total is None and cardinality > 0 and hasattr(dataset, "element_spec"):
        batch = dataset.element_spec[0].shape[0]
        total = cardinality * batch if batch else None
    # Keras' Progbar writes to stdout; send it to stderr so that stdout
    # carries only results (`evaluate ... > table.txt`).
    with contextlib.redirect_stdout(sys.stderr):
        progbar = keras.utils.Progbar(total, stateful_metrics=["clean_err"]) if verbose else None
        for x, y in dataset:
            if num_examples is not None and n >= num_examples:
                break
            if num_examples is not None and n + len(y) > num_examples:
                x, y = x[: num_examples - n], y[: num_examples - n]
            y = tf.cast(y, tf.int64)
            clean_pred = tf.argmax(target(x), axis=-1)
            clean_right = clean_pred == y
            clean_wrong += int(tf.reduce_sum(tf.cast(~clean_right, tf.int32)))
            correct["clean"].append(clean_right.numpy())
            for label, spec, src_name, run, _ in runs:
                start = time.perf_counter()
                x_adv = run(x, y)
                adv_wrong = tf.argmax(target(x_adv), axis=-1) != y
                correct[label].append(~adv_wrong.numpy())
                st = stats[label]
                st["wrong"] += int(tf.reduce_sum(tf.cast(adv_wrong, tf.int32)))
                st["seconds"] += time.perf_counter() - start
                delta = tf.reshape(x_adv - x, (tf.shape(x)[0], -1))
                linf = tf.reduce_max(tf.abs(delta), axis=1)
                l2 = tf.norm(delta, axis=1)
                flipped = tf.cast(clean_right & adv_wrong, linf.dtype)
                st["linf"] += float(tf.reduce_sum(linf))
                st["l2"] += float(tf.reduce_sum(l2))
                st["fooled"] += int(tf.reduce_sum(flipped))
                st["fooled_linf"] += float(tf.reduce_sum(linf * flipped))
                st["fooled_l2"] += float(tf.reduce_sum(l2 * flipped))
            n += int(len(y))
            if progbar is not None:
                progbar.update(n, [("clean_err", clean_wrong / n)])
        if progbar is not None and n != total:
            print()  # Progbar leaves the line open when it does not know the total.
    if n == 0:
        raise ValueError("the dataset yielded no examples to evaluate")

    report = {
        "num_examples": n,
        "clean_error": clean_wrong / n,
        "clean_accuracy": (n - clean_wrong) / n,
        "attacks": {},
    }
    for label, spec, src_name, _, attack_fn in runs:
        st = stats[label]
        entry = {
            "attack": spec.name,
            "norm": attacks.get_entry(spec.name).norm,
            "error": st["wrong"] / n,
            "accuracy": (n - st["wrong"]) / n,
            "mean_linf": st["linf"] / n,
            "mean_l2": st["l2"] / n,
            "fooled": st["fooled"] / n,
            "fooled_mean_linf": st["fooled_linf"] / st["fooled"] if st["fooled"] else None,
            "fooled_mean_l2": st["fooled_l2"] / st["fooled"] if st["fooled"] else None,
            "source": "white-box" if sources is None else src_name,
            "seconds": round(st["seconds"], 2),
        }
        if spec.adaptive and sources is None:
            entry["adaptive"] = spec.adaptive
        entry.update({k: _jsonable(v) for k, v in attack_fn.bound_params.items()})
        report["attacks"][label] = entry
    correct = {k: np.concatenate(v) for k, v in correct.items()}
    linf = [label for label, spec, *_ in runs if attacks.get_entry(spec.name).norm == "linf"]
    worst = np.logical_and.reduce([correct["clean"]] + [correct[k] for k in linf])
    report["robust_accuracy"] = float(worst.mean()) if linf else None
    report["robust_accuracy_attacks"] = linf
    kind = {k: attacks.get_entry(report["attacks"][k]["attack"]) for k in linf}
    black = [k for k in linf if kind[k].black_box]
    # AutoAttack runs Square itself: it is neither side of the comparison.
    white = [k for k in linf if not kind[k].black_box and not kind[k].composite]
    report["black_box_only_fooled"] = None
    if black and white and sources is None:
        survived = np.logical_and.reduce([correct[k] for k in white])
        fell = np.logical_or.reduce([~correct[k] for k in black])
        report["black_box_only_fooled"] = int(np.sum(survived & fell))
    if per_example:
        report["per_example"] = {k: v.tolist() for k, v in correct.items()}
    return report


def format_report(report):
    """Formats a report as a fixed-width table (one row per attack).

    Columns are as wide as their longest entry, so long labels, source paths
    and the parameters of C&W are shown whole.
    """
    header = ["attack", "source", "params", "error", "acc", "mean L2", "mean Linf"]
    rows = [
        [
            "clean",
            "-",
            "-",
            f"{report['clean_error']:.2%}",
            f"{report['clean_accuracy']:.2%}",
            "-",
            "-",
        ]
    ]
    for label, e in report["attacks"].items():
        params = ",".join(f"{k}={_short(v)}" for k, v in e.items() if k not in _NOT_PARAMS)
        rows.append(
            [
                label,
                e["source"],
                params or "-",
                f"{e['error']:.2%}",
                f"{e['accuracy']:.2%}",
                f"{e['mean_l2']:.3f}",
                f"{e['mean_linf']:.3f}",
            ]
        )
    if report.get("robust_accuracy") is not None:
        acc = report["robust_accuracy"]
        rows.append(["worst case", "-", "per example, all L-inf rows", f"{1 - acc:.2%}",
                     f"{acc:.2%}", "-", "-"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for r in [header] + rows:
        left = [f"{c:<{w}}" for c, w in zip(r[:3], widths[:3])]
        right = [f"{c:>{w}}" for c, w in zip(r[3:], widths[3:])]
        lines.append(" ".join(left + right).rstrip())
    lines.append(f"({report['num_examples']} examples)")
    return "\n".join(lines)


# Entry keys that are results, not attack parameters (the table's params column).
_NOT_PARAMS = frozenset(
    {
        "attack",
        "norm",
        "error",
        "accuracy",
        "mean_linf",
        "mean_l2",
        "fooled",
        "fooled_mean_linf",
        "fooled_mean_l2",
        "source",
        "seconds",
    }
)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v
