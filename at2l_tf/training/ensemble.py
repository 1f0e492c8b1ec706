r"""Ensemble AT²L: Algorithm 2 of the paper (Section 3.3).

Adversarial examples come from a set of attacks A and a set of source models
M, so that the trained model resists attack types and source models it did
not see:

    1:  train f on clean data                                  (`pretrain_epochs`)
    2:  repeat (outer loop, every `regenerate_every` epochs):
    3:      X_adv = { X^{a,m} = a(m, X) : a ∈ A, m ∈ M }       (`craft_set`, batched)
    4:      repeat (inner loop, one epoch):
    5:          sample k clean examples (x_i, y_i) from X
    6:          for each, one adversarial version x_adv_i ∈ {X^{a,m}_i}, uniformly over (a, m)
    7:          negatives x_n_i from the clean half (line 13), as in Algorithm 1
    8:          one step of Eq. 2:
                L = 1/((1+λ1) k) Σ [CE(x_i, y_i) + λ1 CE(x_adv_i, y_i)]
                  + λ2/k Σ max(d(f(x_adv_i), f(x_i)) − d(f(x_adv_i), f(x_n_i)) + α, 0)

M is the model being trained plus static pre-trained models (`.keras` files or
exports of this package), which are never updated. The step itself is
`AT2LModel`'s: it takes batches `(x, y, x_adv)` and then uses the given
`x_adv` instead of crafting one, so Eq. 1/Eq. 2, the in-batch negatives and the
metrics are exactly those of Algorithm 1.

**Examples against the current model are regenerated, not crafted in-step.**
Every `regenerate_every` epochs the whole training set is attacked again with
every attack in A against the current weights (the paper's literal outer
loop). Crafting in-step instead would mean running all of A (C&W included) in
every step, or one random attack per batch; the regenerated sets cost one pass
of each attack per regeneration, which is what makes C&W affordable. With A =
{one attack} and M = {the current model} this is the paper's literal Algorithm
1; `AT2LModel` crafting per batch is its limit of regenerating every step.
Examples against static models are crafted once: the models never change and
the attacks of A are deterministic (for random ones, such as PGD's random start,
the set is one draw).

C&W inside training uses a training budget: one binary-search step (a fixed
constant c) of `cw_steps` Adam steps. Its cost per regeneration is
logged and returned (`regeneration_seconds`).
"""

import math
import time

import numpy as np
import tensorflow as tf

from at2l_tf import attacks, savedmodel
from at2l_tf.errors import ConfigError

ATTACK_SETS = {
    "gra": ("fgsm", "ll", "ifgsm", "ill"),  # Gradient-based (the paper's AT²L-Gra).
    "opt": ("cw",),  # Optimisation-based (AT²L-Opt).
    "mix": ("fgsm", "ll", "ifgsm", "ill", "cw"),  # Both (AT²L-Mix).
}
# Attacks that may be members of A: the training attacks on images, and C&W.
ENSEMBLE_ATTACKS = ("fgsm", "fgsm_rs", "ll", "ifgsm", "ill", "pgd", "cw")
CURRENT = "current"  # The name of the model being trained in M.


def parse_attack_set(spec):
    """The attack names of `--ensemble_attacks`: a set name or a comma-separated list.

    Args:
        spec: `gra` | `opt` | `mix`, or attack names (`"fgsm,ll"` or a list).

    Returns:
        A tuple of distinct attack names, in the given order; `()` for an empty spec.

    Raises:
        ConfigError: naming an unknown set or attack.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if len(names) == 1 and names[0] in ATTACK_SETS:
        return ATTACK_SETS[names[0]]
    out = []
    for name in names:
        if name in ATTACK_SETS:
            raise ConfigError(
                f"attack set {name!r} cannot be combined with other names; "
                f"give one of {', '.join(ATTACK_SETS)} alone, or a list of attacks"
            )
        if name not in ENSEMBLE_ATTACKS:
            raise ConfigError(
                f"unknown ensemble attack or attack set {name!r}; known sets: "
                f"{', '.join(ATTACK_SETS)}; known attacks: {', '.join(ENSEMBLE_ATTACKS)}"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def make_attack_fns(names, *, eps, steps, cw_steps=10, cw_const=10.0):
    """`{name: fn(model_fn, x, y) -> x_adv}` for the attacks of A.

    L∞ attacks use `eps` (and `steps` if iterative, with their default step
    size 2.5·eps/steps). C&W uses the training budget: one binary-search step
    at the fixed constant `cw_const`, `cw_steps` Adam steps (learning rate 0.1);
    examples it cannot fool come back unchanged.
    """
    fns = {}
    for name in names:
        if name == "cw":
            fns[name] = attacks.make_attack(
                "cw",
                binary_search_steps=1,
                max_iterations=cw_steps,
                initial_const=cw_const,
            )
            continue
        params = {"eps": eps}
        if "steps" in attacks.get_entry(name).params:
            params["steps"] = steps
        fns[name] = attacks.make_attack(name, **params)
    return fns


def load_static_models(paths, image_shape, num_classes):
    """Loads the static models of M: `[(path, model_fn)]`, each returning logits.

    Raises:
        FileNotFoundError: a path does not exist.
        ModelLoadError: a path holds no readable model.
        ConfigError: a model's input shape or class count differs from the dataset's.
    """
    loaded = []
    for path in paths:
        clf = savedmodel.load_classifier(path)
        if tuple(clf.input_shape) != tuple(image_shape):
            raise ConfigError(
                f"static model {path} takes images of shape {tuple(clf.input_shape)}, "
                f"the dataset's are {tuple(image_shape)}"
            )
        if clf.num_classes != num_classes:
            raise ConfigError(
                f"static model {path} has {clf.num_classes} classes, the dataset has {num_classes}"
            )
        loaded.append((path, clf.model_fn))
    return loaded


def compile_attack(attack_fn, model_fn):
    """`attack_fn` against `model_fn` as one graph function `(x, y) -> x_adv`."""
    return tf.function(lambda xb, yb: attack_fn(model_fn, xb, yb), reduce_retracing=True)


def craft_set(step, x, y, *, batch_size=500, label="", log=None):
    """Runs `step(x, y) -> x_adv` (`compile_attack`) over arrays `x, y`, batched.

    Returns a float32 array like `x`; progress is logged about every 10% when
    `log` is given.
    """
    n = len(x)
    out = np.empty_like(x, dtype=np.float32)
    started, next_report = time.time(), 0.1
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out[start:stop] = step(tf.constant(x[start:stop]), tf.constant(y[start:stop])).numpy()
        if log and stop / n >= next_report and stop < n:
            log(f"  crafting {label}: {stop}/{n} ({time.time() - started:.0f} s)")
            next_report = math.floor(stop / n * 10 + 1) / 10
    return out


def sample_versions(num_examples, num_versions, rng):
    """For each example, which of its `num_versions` adversarial versions to use (uniform)."""
    return rng.integers(0, num_versions, size=num_examples)


def epoch_dataset(x, y, x_adv, *, batch_size, seed):
    """Batches of `(x, y, x_adv)`, shuffled by `seed`, each x_adv_i the version of x_i."""
    ds = tf.data.Dataset.from_tensor_slices((x, y, x_adv))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def fit_ensemble(model, x, y, *, attack_fns, static_models=(), epochs, regenerate_every=1,
                 batch_size=128, seed=0, validation_data=None, callbacks=None, verbose=1,
                 initial_epoch=0, start_epoch=None, log=None):
    """Runs Algorithm 2's outer and inner loops on an `AT2LModel`.

    Args:
        model: a compiled `AT2LModel` (objective `at`, `at2l` or `tr`); its
            classifier is the current model of M.
        x, y: the training set as arrays, images `(N, H, W, C)` in [0, 1] and int labels.
        attack_fns: `{name: fn(model_fn, x, y)}`, the attacks A (`make_attack_fns`).
        static_models: `[(name, model_fn)]`, the static models of M (`load_static_models`).
        epochs: total epochs (the inner loop runs one epoch per `fit` call).
        regenerate_every: epochs between regenerations of the current model's sets (>= 1).
        batch_size: k.
        seed: seeds the version sampling and the shuffling (per epoch).
        validation_data, callbacks, verbose: passed to `fit`.
        initial_epoch: epochs already done (e.g. by clean pre-training), for
            epoch numbering of callbacks and logs.
        start_epoch: the first epoch to run (default `initial_epoch`); a
            resumed run starts later, and crafts the sets of the current model
            first whatever the regeneration schedule (they are not kept).
        log: a `print`-like function for progress, or `None`.

    Returns:
        `{"history": {metric: [per epoch]}, "regeneration_seconds": {"a@m": [s, ...]},
        "versions": ["a@m", ...]}`.
    """
    if regenerate_every < 1:
        raise ConfigError(f"regenerate_every must be >= 1, received regenerate_every={regenerate_every}")
    if not attack_fns:
        raise ConfigError("the ensemble needs at least one attack")
    log = log or (lambda msg: None)
    y = np.asarray(y).astype(np.int64)
    x = np.asarray(x, dtype=np.float32)
    crafter = _Crafter(x, y, attack_fns, log)
    static_sets = crafter.craft(static_models)
    current = [(CURRENT, lambda z: model.classifier(z, training=False))]
    start_epoch = initial_epoch if start_epoch is None else start_epoch
    history, current_sets = {}, {}
    for epoch in range(start_epoch, initial_epoch + epochs):
        if epoch == start_epoch or (epoch - initial_epoch) % regenerate_every == 0:
            log(f"epoch {epoch + 1}: regenerating the adversarial sets against the current model")
            current_sets = crafter.craft(current)
        h = _fit_epoch(model, x, y, {**current_sets, **static_sets}, epoch, seed=seed, batch_size=batch_size,
                       validation_data=validation_data, callbacks=callbacks, verbose=verbose)
        for k, vs in h.history.items():
            history.setdefault(k, []).extend(float(v) for v in vs)
        if model.stop_training:  # A callback stopped training (e.g. Ctrl-C): no more epochs.
            break
    versions = sorted(list(static_sets) + [f"{a}@{CURRENT}" for a in attack_fns])
    return {"history": history, "regeneration_seconds": crafter.timing, "versions": versions}


class _Crafter:
    """Line 3 of Algorithm 2, X^{a,m} = a(m, X) for every attack a of A, against given models m.

    One graph per (attack, source model), reused at every regeneration; `timing`
    holds the seconds of every crafting, `{"a@m": [s, ...]}`.
    """

    def __init__(self, x, y, attack_fns, log):
        self.x, self.y, self.attack_fns, self.log = x, y, attack_fns, log
        self.compiled, self.timing = {}, {}

    def craft(self, sources):
        """`{"a@m": X^{a,m}}` for the models `sources`, `[(m, model_fn)]`."""
        sets = {}
        for m_name, model_fn in sources:
            for a_name, fn in self.attack_fns.items():
                key = f"{a_name}@{m_name}"
                if key not in self.compiled:
                    self.compiled[key] = compile_attack(fn, model_fn)
                t0 = time.time()
                sets[key] = craft_set(self.compiled[key], self.x, self.y, label=key, log=self.log)
                seconds = time.time() - t0
                self.timing.setdefault(key, []).append(round(seconds, 2))
                self.log(f"crafted {key} on {len(self.x)} examples in {seconds:.1f} s")
        return sets


def _fit_epoch(model, x, y, sets, epoch, *, seed, batch_size, **fit_kwargs):
    """Lines 5-8 of Algorithm 2 for one epoch: each x_i with one of its versions in `sets`, uniformly."""
    keys = sorted(sets)
    rng = np.random.default_rng([seed, epoch])
    choice = sample_versions(len(x), len(keys), rng)
    x_adv = np.empty_like(x)
    for v, key in enumerate(keys):
        picked = choice == v
        x_adv[picked] = sets[key][picked]
    ds = epoch_dataset(x, y, x_adv, batch_size=batch_size, seed=seed * 100003 + epoch)
    return model.fit(ds, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, **fit_kwargs)


def dataset_arrays(ds):
    """Materialises an unbatched `(image, label)` dataset as numpy arrays."""
    xs, ys = [], []
    for xb, yb in ds.batch(4096):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    if not xs:
        raise ConfigError("the training split is empty")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


__all__ = [
    "ATTACK_SETS",
    "ENSEMBLE_ATTACKS",
    "compile_attack",
    "craft_set",
    "dataset_arrays",
    "epoch_dataset",
    "fit_ensemble",
    "load_static_models",
    "make_attack_fns",
    "parse_attack_set",
    "sample_versions",
]
