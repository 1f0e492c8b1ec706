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
under *every* L-inf attack, per example (`evaluation.summary`, which turns the
units into the report's figures and formats the table).

**Units: resume and workers.** The work is cut into units, one per batch and
attack (and one per batch for the clean pass): per example of the batch, right
or wrong on the target, and the perturbation's norms. The figures are computed
from the units alone, in batch order. With a `store` (`evaluation.store`) each
unit is saved as soon as it is computed and units already there are not
computed again, so a killed evaluation continues where it stopped and ends with
the same figures; with a `Partition`, each worker attacks whole batches of its
share and the units are exchanged through collectives. Both rely on every
attack's randomness being a function of its inputs (the seeded attacks:
`evaluate` seeds them all), which holds for every attack here but not for a
model that is itself random at inference (random resizing).

**Reduced-precision search.** An attack whose `AttackSpec.model_fn` is an
`attacks.search.SearchModel` (`evaluate --attack_precision=bfloat16`) searches
on a bfloat16 copy of the model; every verdict here is still the target's
(float32), and inside the attacks the float32 model confirms every candidate
(`attacks.search`). Such an attack's row gets `"search": {"precision",
"rejected", "fooled_search_only"}`: the candidates that fooled the copy but not
the float32 model and were therefore not counted (APGD's iterates, Square's
queries; per AutoAttack stage in `stages.<stage>.rejected`), and the returned
examples that fool the copy but not the float32 model (counted robust; `None`
for LS-PGA, which searches on encoded inputs).

Each (attack, source) pair is compiled once with `tf.function`, so the attack
runs as one graph per batch shape; attacks that compile their own pieces and
work on subsets (APGD, Square's early stop, AutoAttack) run eagerly around them.
"""

import dataclasses
import functools
import os
import time

import numpy as np
import tensorflow as tf

from at2l_tf import attacks
from at2l_tf.attacks import search
from at2l_tf.evaluation import store as store_lib
from at2l_tf.evaluation.progress import Progress, choose_mode
from at2l_tf.evaluation.store import unit_key
from at2l_tf.evaluation.summary import format_report, jsonable, summarize  # noqa: F401  (format_report: for older imports)


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


def _run_attack(attack_fn, model_fn, x, y, **extra):
    return attack_fn(model_fn, x, y, **extra)


def _compiled(attack_fn, model_fn):
    # A `partial`, not a closure: TensorFlow counts traces per code object, so
    # one trace for each of several closures of the same `def` would set off
    # its "excessive retracing" warning although nothing is retraced.
    run = functools.partial(_run_attack, attack_fn, model_fn)
    if not getattr(attack_fn, "compile", True):
        return run
    return tf.function(run, reduce_retracing=True)


@dataclasses.dataclass
class Partition:
    """This process's share of the batches when several workers evaluate together.

    Worker `index` of `count` attacks the batches `b` with `b % count == index`
    (whole batches, so that every batch is attacked exactly as one process
    would attack it); `gather(data) -> [data of each worker]` is an all-gather
    of bytes over the workers (through the strategy's collectives, see
    `training.distribute.all_gather_bytes`), after which every worker holds
    every result.

    Attributes:
        index: this worker's share, `0 <= index < count`.
        count: the number of workers.
        gather: the all-gather; needed when `count > 1`.
        name: put before this worker's progress lines.
    """

    index: int = 0
    count: int = 1
    gather: object = None
    name: str = ""

    def owns(self, batch):
        return batch % self.count == self.index


@dataclasses.dataclass
class _Run:
    label: str
    spec: AttackSpec
    source: str
    run: object  # The attack on (x, y), compiled when it may be.
    attack_fn: object
    entry: object
    model: object = None  # What the attack runs on (a `SearchModel` for a reduced-precision search).


def robustness_report(
    model_fn,
    dataset,
    attack_specs,
    *,
    sources=None,
    num_examples=None,
    verbose=1,
    per_example=False,
    store=None,
    partition=None,
):
    """Measures clean error, error under each attack, and the worst case over them.

    Args:
        model_fn: the target; float images -> logits.
        dataset: batched `(images, labels)`; its batches (up to
            `num_examples` examples) are read into memory first.
        attack_specs: list of `AttackSpec`.
        sources: optional `{name: model_fn}` of source models for transfer
            attacks; each attack is then crafted on every source (labels
            `"<attack>@<source>"` when there is more than one source) and
            never on the target.
        num_examples: stop after this many examples (default: the whole dataset).
        verbose: 0 silent; 1 progress on stderr (stdout stays free for the
            table), a Keras progress bar on a terminal and one line per batch
            and attack stage elsewhere; 2 lines even on a terminal
            (`evaluation.progress`).
        per_example: also return `"per_example": {"clean": [bool], label:
            [bool]}`, whether each example is classified correctly.
        store: an `evaluation.store.ResultStore`: units (one per batch and
            attack) found there are used instead of computed, units computed
            are saved there at once. The results do not depend on which units
            were restored: a resumed report equals an uninterrupted one but
            for the times, provided every attack's randomness is seeded (as
            `evaluate` seeds it; a defence layer that is random at inference
            is not).
        partition: a `Partition`: attack only this worker's batches, then
            gather every worker's units; every worker returns the whole report.

    Returns:
        A JSON-ready dict: `{"num_examples", "clean_error", "clean_accuracy",
        "attacks": {label: {"attack", "norm", "error", "accuracy", "mean_linf",
        "mean_l2", "fooled", "fooled_mean_linf", "fooled_mean_l2", "source",
        "seconds", <params>}}}`; `fooled` is the fraction of examples the
        attack flips, the `fooled_mean_*` norms are averaged over them
        (`None` when there are none). A composite attack (AutoAttack) also
        has `"stages": {stage: {"attacked", "fooled", "seconds"}}`.
        `robust_accuracy` (worst case per example over the L-inf rows, named
        in `robust_accuracy_attacks`; `None` without such rows) and
        `black_box_only_fooled` (`None` unless both white-box and black-box
        L-inf attacks ran on the target) complete it. The timing fields are
        `attacks.<label>.seconds` and `attacks.<label>.stages.<stage>.seconds`.

    Raises:
        ValueError: if two attacks have the same label (their counts would
            be added up), or the dataset yields no example.
    """
    runs = _plan_runs(model_fn, attack_specs, sources)
    target = tf.function(model_fn, reduce_retracing=True)
    partition = partition or Partition()

    batches = _read_batches(dataset, num_examples)
    if not batches:
        raise ValueError("the dataset yielded no examples to evaluate")
    sizes = [len(y) for _, y in batches]
    own = [b for b in range(len(batches)) if partition.owns(b)]
    progress = Progress(
        choose_mode(verbose),
        total=sum(sizes[b] for b in own),
        num_batches=len(batches),
        planned={r.label: sum(sizes[b] for b in own) for r in runs},
        units=len(own) * len(runs),
        prefix=partition.name,
    )
    if store is not None:
        found = sum(
            os.path.exists(store.path(b, unit_key(i)))
            for b in own for i in range(len(runs))
        )
        if found:
            progress.message(
                f"continuing the evaluation in {store.workdir}: {found} of "
                f"{len(own) * len(runs)} batch and attack results are there"
            )
    units = _attack_batches(runs, target, batches, own, store, progress)
    progress.close()
    if partition.count > 1:
        units = {
            k: v for data in partition.gather(store_lib.pack(units))
            for k, v in store_lib.unpack(data).items()
        }
    return summarize(runs, units, sizes, sources, per_example)


def _plan_runs(model_fn, attack_specs, sources):
    """One `_Run` per attack and source (the target itself for white-box), each
    attack compiled on the model it crafts on.

    Raises:
        ValueError: two runs with the same label.
    """
    runs = []
    source_items = list((sources or {"target": None}).items())
    for spec in attack_specs:
        attack_fn = attacks.make_attack(spec.name, **spec.params)
        for src_name, src_fn in source_items:
            label = spec.label if len(source_items) == 1 else f"{spec.label}@{src_name}"
            if any(label == r.label for r in runs):
                raise ValueError(
                    f"two attacks have the label {label!r}; give them distinct "
                    "`AttackSpec.label`s"
                )
            on = src_fn or spec.model_fn or model_fn
            compiled = _compiled(attack_fn, on)
            runs.append(_Run(label, spec, src_name, compiled, attack_fn, attacks.get_entry(spec.name), on))
    return runs


def _attack_batches(runs, target, batches, own, store, progress):
    """`{(batch, unit_key(...)): unit}` of this worker's batches `own`: the clean
    pass, then every run, each unit from `store` if it is there, else computed
    (and saved). Progress counts the examples still robust to every L-inf run."""
    units = {}
    reached = robust = 0
    for b in own:
        x, y = tf.constant(batches[b][0]), tf.constant(batches[b][1])
        clean, _ = _unit(store, b, unit_key(), lambda: _clean_unit(target, x, y))
        units[(b, unit_key())] = clean
        alive = np.array(clean["correct"], bool)
        reached += len(alive)
        robust += int(alive.sum())
        for i, r in enumerate(runs):
            unit, fresh = _unit(
                store, b, unit_key(i), functools.partial(_attack_unit, r, target, x, y, progress, b)
            )
            units[(b, unit_key(i))] = unit
            progress.count(r.label, len(alive), unit["seconds"])
            if r.entry.norm == "linf":
                survived = alive & np.array(unit["correct"], bool)
                robust -= int(alive.sum() - survived.sum())
                alive = survived
            if fresh:
                progress.unit(b, r.label, reached=reached, robust=robust)
            else:
                progress.skip(1)
    return units


def _read_batches(dataset, num_examples):
    """The dataset's batches as NumPy `(images, int64 labels)`, cut at `num_examples`."""
    out, n = [], 0
    for x, y in dataset:
        if num_examples is not None and n >= num_examples:
            break
        x, y = np.asarray(x), np.asarray(y).astype(np.int64)
        if num_examples is not None and n + len(y) > num_examples:
            x, y = x[: num_examples - n], y[: num_examples - n]
        if len(y):
            out.append((x, y))
            n += len(y)
    return out


def _unit(store, batch, key, compute):
    """`(unit, fresh)`: the unit `(batch, key)` from `store` if it is there
    (`fresh` False), else `compute()`d and saved at once (`fresh` True)."""
    unit = store.load(batch, key) if store is not None else None
    if unit is not None:
        return unit, False
    unit = compute()
    if store is not None:
        store.save(batch, key, unit)
    return unit, True


def _clean_unit(target, x, y):
    start = time.perf_counter()
    right = (tf.argmax(target(x), axis=-1) == y).numpy()
    return {"correct": right, "seconds": time.perf_counter() - start}


def _attack_unit(r, target, x, y, progress, batch):
    """One attack on one batch: per example, right or wrong on the target, and the norms."""
    stages = []
    extra = {}
    if "on_stage" in r.entry.params:  # A composite attack that reports its stages.

        def on_stage(stage, attacked, left, seconds, **more):
            entry = {"stage": stage, "attacked": attacked, "robust": left, "seconds": seconds}
            if "rejected" in more:
                entry["rejected"] = int(more["rejected"])
            stages.append(entry)
            progress.stage(batch, r.label, stage, attacked=attacked, robust=left)

        extra["on_stage"] = on_stage
    mixed = search.is_search(r.model)
    if mixed:
        r.model.take_rejected()  # Count this unit's rejections only.
    start = time.perf_counter()
    x_adv = r.run(x, y, **extra)
    adv_wrong = (tf.argmax(target(x_adv), axis=-1) != y).numpy()  # The verdict: float32.
    seconds = time.perf_counter() - start
    delta = tf.reshape(tf.cast(x_adv, x.dtype) - x, (tf.shape(x)[0], -1))
    unit = {
        "correct": ~adv_wrong,
        "linf": tf.reduce_max(tf.abs(delta), axis=1).numpy(),
        "l2": tf.norm(delta, axis=1).numpy(),
        "seconds": seconds,
        "label": r.label,
        "seed": jsonable(r.spec.params.get("seed")),
    }
    if "on_stage" in extra:
        unit["stages"] = stages
    if mixed:
        only = None  # Attacks behind a defence layer (LS-PGA) search on encoded inputs.
        if r.entry.inputs == "images":
            search_wrong = (tf.argmax(r.model(x_adv), axis=-1) != y).numpy()
            only = int(np.sum(search_wrong & ~adv_wrong))
        unit["search"] = {
            "rejected": r.model.take_rejected() + sum(st.get("rejected", 0) for st in stages),
            "fooled_search_only": only,
        }
    return unit
