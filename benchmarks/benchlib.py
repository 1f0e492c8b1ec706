"""What the speed benchmarks share: their targets, the peer libraries (ART, Foolbox, eager
CleverHans) as contenders, interleaved timing, and `speed_main`, which runs speed families.

The scripts run as `python benchmarks/<name>.py`, so this directory is first
on `sys.path` and `import benchlib` finds this module. Provenance is
`provenance.py`'s, markdown `mdtable.py`'s (both re-exported here for the speed
scripts); train runs are `runlib.py`'s.
"""

import os
import sys
import time
import warnings

# Re-exported for the speed scripts (speed_attack_precision.py reads `_cpuinfo`).
from mdtable import markdown_only  # noqa: F401
from at2l_tf.log import log as at2l_log
from provenance import _cpuinfo, git_commit, machine, peak_rss_mb, provenance, version, versions  # noqa: F401

# The speed targets of issue 5, as speed.py checks them: name -> (comparison, threshold).
TARGETS = {
    "at2l_over_at": ("<=", 1.05),
    "pgd_efficiency": ("<=", 1.15),
    "pgd_vs_art": (">=", 3.0),
    "fgsm_vs_art": (">=", 2.0),
    "pgd_vs_cleverhans_eager": (">=", 2.0),
    "apgd_vs_art": (">=", 3.0),
    "pgd_vs_foolbox": (">=", 2.0),
}

ART_NOTE = "adversarial-robustness-toolbox not installed (pip install -e '.[bench]')"
FOOLBOX_NOTE = "foolbox not installed (pip install -e '.[bench]')"


def import_art():
    """ART's `(TensorFlowV2Classifier, FastGradientMethod, ProjectedGradientDescent)`, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "PyTorch not found" and the like.
            from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
            from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        return None
    return TensorFlowV2Classifier, FastGradientMethod, ProjectedGradientDescent


def import_foolbox():
    """The `foolbox` module (3.x, with eagerpy), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import foolbox
    except ImportError:
        return None
    return foolbox


def check_mnist_models(names):
    """Raises a one-line ConfigError unless every name is a registered MNIST model."""
    from at2l_tf import models
    from at2l_tf.errors import ConfigError

    mnist = [m for m in models.available_models() if models.get_entry(m).dataset == "mnist"]
    for name in names:
        entry = models.get_entry(name)  # Unknown: ConfigError listing the known models.
        if entry.dataset != "mnist":
            raise ConfigError(
                f"model {name!r} is a {entry.dataset} model; the benchmarks run on MNIST: "
                f"{', '.join(mnist)}"
            )


def batches(images, labels, n, batch_size):
    """The first `n` batches of uint8 images as float32 NumPy `(x, y)`, x in [0, 1]."""
    out = []
    for i in range(n):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        out.append(((images[sl].astype("float32") / 255.0), labels[sl].astype("int64")))
    return out


def interleaved(fns, *, repeats, warmup, calls=1):
    """Times callables round-robin.

    Args:
        fns: `{name: fn}`; each `fn()` must block until its work is done
            (return NumPy, or call `.numpy()`).
        repeats: timed rounds; in each, every fn is called `calls` times.
        warmup: untimed calls of each fn first (tracing, caches).
        calls: calls per fn per round.

    Returns:
        `({name: [wall seconds per call, one per round]}, {name: [CPU seconds
        per call]}, {name: last output})`. The order of the fns is rotated
        every round so that no contender always runs first; the CPU time (all
        threads of this process) is the work done, whatever other processes
        take from the machine.
    """
    names = list(fns)
    last = {}
    for name in names:
        for _ in range(warmup):
            last[name] = fns[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                last[name] = fns[name]()
            wall[name].append((time.perf_counter() - start) / calls)
            cpu[name].append((time.process_time() - start_cpu) / calls)
    return wall, cpu, last


def cleverhans_eager_pgd(clf, x, y, eps, step, k):
    """CleverHans' PGD-k called eagerly, as its tutorial does, with our PGD's settings.

    L-inf, box [0, 1], true labels, one random start; NumPy in and out.
    """
    import numpy as np
    import tensorflow as tf
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    return projected_gradient_descent(
        clf, tf.constant(x), eps, step, k, np.inf,
        clip_min=0.0, clip_max=1.0, y=tf.constant(y), rand_init=True,
    ).numpy()


def art_estimator(art, clf):
    """`clf` (a Keras model giving logits) wrapped in ART's `TensorFlowV2Classifier`, box [0, 1]."""
    import keras

    classifier_cls = art[0]
    return classifier_cls(
        model=clf,
        nb_classes=int(clf.output_shape[-1]),
        input_shape=tuple(clf.input_shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def art_attacks(art, clf, eps, step, k, batch_size):
    """ART's `(FastGradientMethod, ProjectedGradientDescent)` on `clf`, with our settings.

    `art` is `import_art()`'s triple. The Keras model is wrapped in a
    `TensorFlowV2Classifier` (logits, box [0, 1]); FGSM has no random start, PGD-k
    one, with step `step`.
    """
    import numpy as np

    _, fgm_cls, pgd_cls = art
    estimator = art_estimator(art, clf)
    fgsm = fgm_cls(estimator, norm=np.inf, eps=eps, num_random_init=0, batch_size=batch_size)
    pgd = pgd_cls(
        estimator, norm=np.inf, eps=eps, eps_step=step, max_iter=k,
        num_random_init=1, batch_size=batch_size, verbose=False,
    )
    return fgsm, pgd


def art_apgd(art, clf, eps, steps, batch_size):
    """ART's `AutoProjectedGradientDescent` on `clf`, as our `apgd_ce` with one restart.

    L-inf, `steps` iterations, one random start, untargeted, initial step
    `2 eps` (as ours and the paper), ART's own cross-entropy loss
    (`loss_type="cross_entropy"`: ART then re-wraps the Keras model in a second
    `TensorFlowV2Classifier` with a per-example CE on one-hot labels, which its
    step-size rule needs), no progress bars.
    """
    import numpy as np
    from art.attacks.evasion import AutoProjectedGradientDescent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoProjectedGradientDescent(
            art_estimator(art, clf), norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
            targeted=False, nb_random_init=1, batch_size=batch_size,
            loss_type="cross_entropy", verbose=False,
        )


def foolbox_pgd(foolbox, clf, eps, step, k):
    """Foolbox's `LinfPGD` on `clf` with our PGD-k's settings, NumPy in and out.

    `foolbox.TensorFlowModel(clf, bounds=(0, 1))`, `k` steps of `step`
    (`rel_stepsize = step / eps`: 0.25 for 2.5 eps / 10), one random start,
    the labels given; called as its documentation does, `attack(fmodel, x, y,
    epsilons=eps)`, which also checks the input bounds and, after the attack,
    which outputs are adversarial (one more forward pass). Returns its clipped
    adversarials.
    """
    import tensorflow as tf

    fmodel = foolbox.TensorFlowModel(clf, bounds=(0.0, 1.0))
    attack = foolbox.attacks.LinfPGD(steps=k, rel_stepsize=step / eps, random_start=True)

    def run(x, y):
        _, clipped, _ = attack(fmodel, tf.constant(x), tf.constant(y), epsilons=eps)
        return clipped.numpy()

    return run


# ------------------------------------------------------------------ speed families
#
# The speed benchmarks measure families of figures, one module each:
# `speed_training.py` (training cost) and `speed_attacks.py` (our attacks against
# their floor and against ART, Foolbox and eager CleverHans); `speed.py` runs
# them all into one JSON. A family module has
#
#   FIGURES      its figures (the JSON keys under `models.<name>`), in order;
#   XLA_FIGURES  those whose timing also runs `jit_compile=True` variants;
#   configure(cfg, figures, pick) -> keys
#                adds its settings to `cfg` from its own flags (`pick(value,
#                full, quick)` applies `--quick`), may drop figures from
#                `figures`, and returns the settings that must be >= 1;
#   measure(model_name, cfg, record, figures, peers)
#                measures its `figures` on one model into `record`;
#   settings(cfg) what its runs were, for the JSON's `settings`;
#   table_rows(table) its rows of the printed table (a `TextTable`).

# Figures that compare with another library, and that library.
PEERS = {
    "fgsm_vs_art": "art",
    "pgd_vs_art": "art",
    "apgd_vs_art": "art",
    "pgd_vs_foolbox": "foolbox",
}
PEER_NOTES = {"art": ART_NOTE, "foolbox": FOOLBOX_NOTE}


def log(msg):
    at2l_log(msg, prefix="speed")


class Section:
    """Wall time, CPU time and load average around one part of a benchmark."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.load = os.getloadavg()[0]
        log(f"{self.name} ...")
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        self.record = {
            "wall_s": round(wall, 2),
            # Cores this process got on average; ~cpu_count when it had the machine.
            "cpu_cores_used": round(cpu / wall, 2) if wall > 0 else None,
            "load_avg_1min": [round(self.load, 2), round(os.getloadavg()[0], 2)],
        }
        log(f"{self.name}: {wall:.1f} s, {self.record['cpu_cores_used']} cores")
        return False


_MNIST_ARRAYS = {}


def mnist_arrays(split):
    """`(uint8 images, labels)` of the shipped MNIST's `split`, loaded once per process."""
    if split not in _MNIST_ARRAYS:
        from at2l_tf import data

        _MNIST_ARRAYS[split] = data.load_mnist_arrays(split)
    return _MNIST_ARRAYS[split]


def figure_order(families):
    """Every figure of `families`: the targets (in `TARGETS`' order), then the others."""
    figures = [f for fam in families for f in fam.FIGURES]
    return [t for t in TARGETS if t in figures] + [f for f in figures if f not in TARGETS]


def targets(results, figures):
    """Each measured target with its value per model; it passes when every model meets it.

    A figure whose peer library is missing (value None) has `pass` None and a `skipped` note.
    """
    out = {}
    for name, (op, threshold) in TARGETS.items():
        if name not in figures:
            continue
        values = {m: r[name] for m, r in results.items()}
        entry = {"target": f"{op} {threshold:g}", "values": values}
        if any(v is None for v in values.values()):
            entry["pass"] = None
            entry["skipped"] = PEER_NOTES[PEERS[name]]
        else:
            ok = [(v <= threshold) if op == "<=" else (v >= threshold) for v in values.values()]
            entry["pass"] = all(ok)
        out[name] = entry
    return out


class TextTable:
    """The printed table of a speed run: a row per figure, a column per model."""

    def __init__(self, results):
        self.res = results
        self.names = list(results)
        self.width = max(14, *(len(n) + 2 for n in self.names))
        self.lines = []

    def row(self, label, values, target=""):
        self.lines.append(f"{label:<28}{target:>8}" + "".join(f"{v:>{self.width}}" for v in values))

    @staticmethod
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    def cells(self, get, spec):
        """`get(record)` of every model, formatted with `spec`."""
        return [self.fmt(get(self.res[n]), spec) for n in self.names]

    def have(self, *keys):
        """Every model's record has this (nested) figure."""

        def get(r):
            for key in keys:
                if not isinstance(r, dict) or key not in r:
                    return False
                r = r[key]
            return True

        return all(get(self.res[n]) for n in self.names)


def _speed_table(name, summary, families):
    res = summary["models"]
    table = TextTable(res)
    m, load = summary["machine"], summary["load"]
    table.lines.append(
        f"{name}: {m['cpu_model']}, {m['cpu_count']} CPUs, "
        f"batch {summary['settings']['batch_size']}, "
        f"median of {summary['settings']['repeats']} rounds"
        + (" (--quick)" if summary["quick"] else "")
        + f"; load avg {load['load_avg_1min_start']} -> {load['load_avg_1min_end']}"
    )
    table.lines.append(f"{'figure':<28}{'target':>8}" + "".join(f"{n:>{table.width}}" for n in table.names))
    for figure in summary["targets"]:
        op, thr = TARGETS[figure]
        cells = []
        for n in table.names:
            v = res[n][figure]
            ok = "" if v is None else (" ok" if (v <= thr if op == "<=" else v >= thr) else " MISS")
            cells.append(table.fmt(v, ".2f") + ok)
        table.row(figure, cells, f"{op}{thr:g}")
    for fam in families:
        fam.table_rows(table)
    table.lines.append(
        f"benchmark peak RSS {summary['peak_rss_mb']:.0f} MB; total {summary['wall_s']:.0f} s"
    )
    if summary.get("skipped"):
        table.lines.append(f"figures skipped: {summary['skipped']}")
    return "\n".join(table.lines)


def speed_main(name, families):
    """Runs the speed `families` (modules, see above) as `python benchmarks/<name>.py`.

    Defines the flags every family shares, then runs under `cli.run` (one-line
    errors): per model (`--models`), each family measures the figures of
    `--figures` it owns, in the order of `families`; prints a table and writes
    `--output_json`.
    """
    from absl import flags

    from at2l_tf import cli

    every = figure_order(families)
    flags.DEFINE_bool(
        "quick", False, "Short run (< 1 min): mnist_small, 3 rounds, PGD-3, epoch extrapolated."
    )
    flags.DEFINE_string("output_json", None, "Where to write the results JSON.")
    flags.DEFINE_list(
        "models", None, "Models (default mnist_small,madry_mnist; --quick: mnist_small)."
    )
    flags.DEFINE_integer("batch_size", 128, "Examples per batch, everywhere.")
    flags.DEFINE_integer("repeats", None, "Timed rounds per figure (default 9; --quick: 3).")
    flags.DEFINE_integer("warmup", None, "Untimed calls before timing (default 2; --quick: 1).")
    flags.DEFINE_float("eps", 0.3, "L-inf radius of every attack.")
    flags.DEFINE_bool(
        "xla", None, "Also time attacks and train steps with jit_compile=True (default: not --quick)."
    )
    flags.DEFINE_enum(
        "device", "cpu", ["cpu", "gpu"], "cpu hides every GPU; gpu uses TensorFlow's default."
    )
    flags.DEFINE_integer("seed", 0, "Seed of weights, data order and random starts.")
    flags.DEFINE_list(
        "figures", None, f"Figures to measure, comma-separated (default: all): {', '.join(every)}."
    )
    # `--help` lists the main module's key flags: the shared ones and the families' too.
    for module in (__name__, *(fam.__name__ for fam in families)):
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    cli.run(lambda argv: _speed_run(name, families, every, flags.FLAGS), name)


def _speed_run(name, families, every, FLAGS):
    import gc

    import tensorflow as tf

    from at2l_tf.errors import ConfigError
    from at2l_tf.fileio import atomic_write_json

    started = time.perf_counter()
    load_start = os.getloadavg()
    quick = FLAGS.quick

    def pick(value, full, short):
        return value if value is not None else (short if quick else full)

    cfg = {
        "quick": quick,
        "batch_size": FLAGS.batch_size,
        "repeats": pick(FLAGS.repeats, 9, 3),
        "warmup": pick(FLAGS.warmup, 2, 1),
        "eps": FLAGS.eps,
        "xla": pick(FLAGS.xla, True, False),
        "seed": FLAGS.seed,
    }
    # Checked first: an unknown name stops the run before any work, nothing written.
    figures = list(every) if FLAGS.figures is None else [f.strip() for f in FLAGS.figures]
    unknown = [f for f in figures if f not in every]
    if unknown or not figures:
        what = f"unknown figure {unknown[0]!r}" if unknown else "--figures names no figure"
        raise ConfigError(f"{what}; known figures: {', '.join(every)}")
    positive = ["batch_size", "repeats"]
    for fam in families:
        positive += fam.configure(cfg, figures, pick)
    figures = [f for f in every if f in figures]  # Canonical order, no duplicates.
    families = [fam for fam in families if set(fam.FIGURES) & set(figures)]
    # XLA variants exist only for some figures (train steps, our PGD against its floor).
    cfg["xla"] = cfg["xla"] and any(f in fam.XLA_FIGURES for fam in families for f in figures)
    model_names = pick(FLAGS.models, ["mnist_small", "madry_mnist"], ["mnist_small"])
    check_mnist_models(model_names)
    for key in positive:
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, received {key}={cfg[key]}")
    if cfg["batch_size"] < 2:  # Triplets need two examples.
        raise ConfigError(f"batch_size must be >= 2, received batch_size={cfg['batch_size']}")

    if FLAGS.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    # Each model traces its own train function; TensorFlow's retracing heuristic
    # counts those as retraces of one function and warns.
    tf.get_logger().setLevel("ERROR")
    # The peer libraries, imported only for the figures that use them (None: not installed).
    peers = {
        "art": import_art() if any(PEERS.get(f) == "art" for f in figures) else None,
        "foolbox": import_foolbox() if "pgd_vs_foolbox" in figures else None,
    }

    results = {}
    for model_name in model_names:
        record = {"sections": {}, "xla": {}}
        for fam in families:
            fam.measure(model_name, cfg, record, figures, peers)
        results[model_name] = record
        gc.collect()

    settings = {key: cfg[key] for key in ("batch_size", "repeats", "warmup", "eps", "seed", "xla")}
    for fam in families:
        settings.update(fam.settings(cfg))
    summary = {
        "benchmark": name,
        "command": " ".join(["python", f"benchmarks/{name}.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "machine": {
            **machine(),
            "device": FLAGS.device,
            "tf_threads": {  # 0: TensorFlow picks (one per core).
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            },
        },
        "git_commit": git_commit(),
        "versions": versions(peers["art"], peers["foolbox"]),
        "settings": {
            **settings,
            "figures": figures,
            "timing": "median over rounds of wall time; contenders interleaved round-robin",
            "data": "MNIST shipped with at2l_tf: train split for training, test split for attacks",
            "models": model_names,
        },
        "models": results,
    }
    missing = [p for p in PEER_NOTES if any(PEERS.get(f) == p for f in figures) and not peers[p]]
    if missing:
        summary["skipped"] = "; ".join(PEER_NOTES[p] for p in missing)
    summary["targets"] = targets(results, figures)
    summary["peak_rss_mb"] = peak_rss_mb()
    try:
        import psutil

        summary["rss_end_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    except ImportError:
        pass
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["load"] = {
        "load_avg_1min_start": round(load_start[0], 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "process_cpu_s": round(time.process_time(), 1),
    }
    print(_speed_table(name, summary, families))  # The families that measured something.
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)
