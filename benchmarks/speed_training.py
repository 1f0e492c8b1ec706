r"""Training cost: the AT²L training step against the AT step, an epoch, the train command.

    python benchmarks/speed_training.py --output_json=/tmp/speed_training.json  # ~10 min, 2 CPUs
    python benchmarks/speed_training.py --quick                                 # < 1 min

One family of `speed.py`'s figures (which runs this and `speed_attacks.py`
together); the flags, timing and top-level JSON keys they share are
`speed.py`'s (`benchlib.speed_main`). Training batches are real MNIST (the
copy shipped with the package). `--quick`: `mnist_small` only, 3 rounds, 1
warm-up, PGD-3, epoch extrapolated, no XLA.

Figures, per model (the JSON keys under `models.<name>`):

* `at2l_over_at`: one AT²L training step over one AT step, both the compiled
  `AT2LModel.train_step` (Keras' `train_function` on a fixed batch) with the
  same PGD-`--train_pgd_steps` (5) attack. Target <= 1.05: the triplet term
  reuses the clean logits. `triplet_term_s` times that term alone (forward
  and backward) and `at2l_over_at_expected` = (AT step + it) / AT step.
* `train_epoch_s`: seconds of one `fit` epoch (55,000 images, batch 128, the
  train command's pipeline) for the defences none / at / at2l, run one after
  the other (with the CPU cores each got). With `--quick`,
  `--quick_epoch_steps` steps extrapolated to the epoch, marked
  `"extrapolated": true`.
* `train_run`: the train command (`python -m at2l_tf.train`, AT²L with the
  default recipe, one epoch, its final robustness check and export) run once in
  a child process: `wall_s` and `peak_rss_mb`, the peak resident memory of a
  training run. `--quick`: 512 training images, 100 checked. `--notrain_run`
  skips it.
* `recipe_step_s`: the compiled TRADES step (β 6, its KL attack with
  `--train_pgd_steps` steps) under `--recipe_precision` (default bfloat16),
  plain and with each training ingredient — weight averaging (`ema` 0.995),
  AWP (`awp` γ 5e-3, on from the first step), both — timed in the same rounds;
  with the model's parameter count (`params`) and the ratios `ema_over_plain`,
  `awp_over_plain`. E.g. the larger network:
  `python benchmarks/speed_training.py --models=mnist_wide_silu --figures=recipe_step_s`.
* also `train_step_s` (and `train_step_cpu_s`, `train_step_rounds_s`),
  `at2l_over_at_paired` and `at2l_over_at_cpu` (cross-checks less sensitive to
  load), `at_over_none`, and under `xla` the same steps compiled with
  `jit_compile=True`, timed in the same rounds as the plain ones.
"""

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time

# at2l_tf first: it sets TensorFlow's environment defaults, which TensorFlow reads
# once when it loads, so the benchmark runs TensorFlow as the train command does.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.

import keras
import tensorflow as tf
from absl import flags

from at2l_tf import data, models
from at2l_tf.training.at2l_model import AT2LModel
from at2l_tf.training.triplet_regularizer import TripletRegularizer

flags.DEFINE_integer(
    "train_steps_per_round", None, "Training steps per timed round (default 3; --quick: 1)."
)
flags.DEFINE_integer(
    "train_pgd_steps", None, "PGD steps of the training attack (default 5; --quick: 3)."
)
flags.DEFINE_bool(
    "train_run", True, "Also run the train command once per model, for its peak memory."
)
flags.DEFINE_integer(
    "quick_epoch_steps", 3, "With --quick: fit steps timed and extrapolated to an epoch."
)
flags.DEFINE_enum(
    "recipe_precision", "bfloat16", ["off", "bfloat16"],
    "Precision of the recipe_step_s figure (the TRADES step with each training ingredient).",
)
FLAGS = flags.FLAGS

FIGURES = ("at2l_over_at", "train_epoch_s", "train_run", "recipe_step_s")
XLA_FIGURES = ("at2l_over_at",)
DEFENSES = ("none", "at", "at2l")
# recipe_step_s: the TRADES step, plain and with each training ingredient (AT2LModel arguments).
RECIPE_VARIANTS = {
    "plain": {},
    "ema": {"ema": 0.995},
    "awp": {"awp_gamma": 5e-3},
    "ema_awp": {"ema": 0.995, "awp_gamma": 5e-3},
}
MNIST_TRAIN_EXAMPLES = 55000  # 60,000 minus the default 5,000 validation images.


def configure(cfg, figures, pick):
    """This family's settings, into `cfg`; `--notrain_run` drops `train_run` from `figures`."""
    cfg["train_steps_per_round"] = pick(FLAGS.train_steps_per_round, 3, 1)
    cfg["train_pgd_steps"] = pick(FLAGS.train_pgd_steps, 5, 3)
    cfg["quick_epoch_steps"] = FLAGS.quick_epoch_steps
    cfg["recipe_precision"] = FLAGS.recipe_precision
    if not FLAGS.train_run and "train_run" in figures:
        figures.remove("train_run")
    cfg["train_run"] = "train_run" in figures
    return ["train_steps_per_round", "train_pgd_steps", "quick_epoch_steps"]


def settings(cfg):
    return {
        **{key: cfg[key] for key in ("train_steps_per_round", "train_pgd_steps", "train_run")},
        "quick_epoch_steps": cfg["quick_epoch_steps"] if cfg["quick"] else None,
        "train_attack": f"pgd, {cfg['train_pgd_steps']} steps, step 2.5*eps/steps, random start",
        "train": "AT2LModel defaults: lambda1=1, lambda2=0.5, margin=0.5, Adam(1e-3)",
        "recipe": (f"trades beta 6, trades_kl {cfg['train_pgd_steps']} steps, Adam(1e-3), "
                   f"precision {cfg['recipe_precision']}; ema 0.995, awp gamma 5e-3 from step 1"),
    }


def measure(model_name, cfg, record, figures, peers):
    """The training figures among `figures`, on `model_name`, into `record`."""
    del peers  # Training is ours alone.
    if {"at2l_over_at", "train_epoch_s"} & set(figures):
        bench_train(model_name, benchlib.mnist_arrays("train"), cfg, record, figures)
    if cfg["train_run"]:
        bench_train_run(model_name, cfg, record)
    if "recipe_step_s" in figures:
        bench_recipe_steps(model_name, benchlib.mnist_arrays("train"), cfg, record)


def table_rows(table):
    for key, label in (
        ("at2l_over_at_cpu", "at2l_over_at, CPU time"),
        ("at2l_over_at_expected", "at2l_over_at, expected"),
    ):
        if table.have(key):
            table.row(label, table.cells(lambda r: r[key], ".3f"))
    if table.have("train_step_s"):
        for d in DEFENSES:
            table.row(f"train step s, {d}", table.cells(lambda r: r["train_step_s"][d], ".3f"))
    if table.have("train_epoch_s"):
        ex = any(table.res[n]["train_epoch_s"]["extrapolated"] for n in table.names)
        for d in DEFENSES:
            label = f"train epoch s, {d}" + (" (extrap.)" if ex else "")
            table.row(label, table.cells(lambda r: r["train_epoch_s"][d], ".1f"))
    if table.have("xla", "train_step_speedup"):
        for d in DEFENSES:
            table.row(
                f"XLA train speed-up, {d}",
                table.cells(lambda r: r["xla"]["train_step_speedup"][d], ".2f"),
            )
    if table.have("recipe_step_s"):
        table.row("parameters", table.cells(lambda r: r["recipe_step_s"]["params"], ",d"))
        for v in RECIPE_VARIANTS:
            table.row(f"TRADES step s, {v}", table.cells(lambda r: r["recipe_step_s"]["steps_s"][v], ".3f"))
    if table.have("train_run"):
        table.row("train command s", table.cells(lambda r: r["train_run"]["wall_s"], ".0f"))
        table.row(
            "train command peak MB", table.cells(lambda r: r["train_run"]["peak_rss_mb"], ".0f")
        )


class _StepClock(keras.callbacks.Callback):
    """Notes when `fit` starts and when each training step ends."""

    def on_train_begin(self, logs=None):
        self.begin = time.perf_counter()
        self.step_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.step_ends.append(time.perf_counter())


def _triplet_term_s(cfg, num_classes, repeats=50):
    """Seconds of the λ2 term alone (Eq. 2, forward and backward) on one batch of logits.

    This is all the work AT²L adds to an AT step (its negatives' logits come
    from the clean forward pass), so `(at + this) / at` is what `at2l_over_at`
    should be without noise.
    """
    bs = cfg["batch_size"]
    reg = TripletRegularizer(0.5, 0.5, num_classes, seed=cfg["seed"])
    labels = tf.random.stateless_uniform((bs,), (cfg["seed"], 2), 0, num_classes, tf.int32)
    clean = tf.random.stateless_normal((bs, num_classes), (cfg["seed"], 3))
    adv = tf.random.stateless_normal((bs, num_classes), (cfg["seed"], 4))
    k = tf.constant(float(bs))

    @tf.function
    def term(clean, adv):
        with tf.GradientTape() as tape:
            tape.watch([clean, adv])
            reg(labels, clean, adv, k)
            loss = tf.add_n(reg.losses)
        return tape.gradient(loss, [clean, adv])

    wall, _, _ = benchlib.interleaved(
        {"triplet": lambda: term(clean, adv)[0].numpy()}, repeats=repeats, warmup=2
    )
    return statistics.median(wall["triplet"])


def bench_train(model_name, train_arrays, cfg, record, figures):
    """Step time of none / AT / AT²L (compiled train_step) and one epoch of each.

    The steps when `at2l_over_at` is among `figures`, the epochs when `train_epoch_s` is.
    """
    time_steps = "at2l_over_at" in figures
    ((x, y),) = benchlib.batches(*train_arrays, 1, cfg["batch_size"])
    # Same element spec as the training pipeline, so `fit` below reuses the trace.
    fixed = tf.data.Dataset.from_tensors((x, y)).repeat()
    attack_params = {"eps": cfg["eps"], "steps": cfg["train_pgd_steps"]}

    def build(defense, jit_compile):
        keras.utils.set_random_seed(cfg["seed"])  # Same initial weights for every defence.
        clf = models.get_model(model_name)
        model = AT2LModel(
            clf, defense=defense, attack="pgd", attack_params=attack_params, seed=cfg["seed"]
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
        model.optimizer.build(model.trainable_variables)
        model.make_train_function()
        it = iter(fixed)
        fn = model.train_function

        def step():
            return float(fn(it)["loss"])  # Reading a metric waits for the step.

        return model, step

    # Every variant is timed in the same rounds, XLA ones included, so that
    # changes in the machine's load do not show up as differences between them.
    variants = {d: build(d, False) for d in DEFENSES}
    if time_steps:
        _time_train_steps(model_name, cfg, record, variants, build)
    if "train_epoch_s" in figures:
        _time_train_epochs(model_name, cfg, record, variants)
    del variants
    gc.collect()


def _time_train_steps(model_name, cfg, record, variants, build):
    """`at2l_over_at` and the step times: the compiled steps of every defence, interleaved."""
    if cfg["xla"]:
        variants.update({f"{d}_xla": build(d, True) for d in DEFENSES})
    with benchlib.Section(f"{model_name}: train steps") as s:
        wall, cpu, _ = benchlib.interleaved(
            {name: v[1] for name, v in variants.items()},
            repeats=cfg["repeats"],
            warmup=cfg["warmup"],
            calls=cfg["train_steps_per_round"],
        )
    record["sections"]["train_steps"] = s.record
    med = {name: statistics.median(t) for name, t in wall.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}

    def figures(suffix):
        at, at2l = f"at{suffix}", f"at2l{suffix}"
        paired = [b / a for a, b in zip(wall[at], wall[at2l])]
        return {
            "train_step_s": {d: round(med[d + suffix], 4) for d in DEFENSES},
            "train_step_cpu_s": {d: round(med_cpu[d + suffix], 4) for d in DEFENSES},
            "train_step_rounds_s": {d: [round(v, 4) for v in wall[d + suffix]] for d in DEFENSES},
            "at2l_over_at": round(med[at2l] / med[at], 3),
            # Cross-checks, less sensitive to load: median of per-round ratios, and CPU time.
            "at2l_over_at_paired": round(statistics.median(paired), 3),
            "at2l_over_at_cpu": round(med_cpu[at2l] / med_cpu[at], 3),
            "at_over_none": round(med[at] / med[f"none{suffix}"], 3),
        }

    record.update(figures(""))
    triplet_s = _triplet_term_s(cfg, int(variants["at"][0].num_classes))
    record["triplet_term_s"] = round(triplet_s, 6)
    record["at2l_over_at_expected"] = round((med["at"] + triplet_s) / med["at"], 4)
    if cfg["xla"]:
        record["xla"].update(figures("_xla"))
        record["xla"]["train_step_speedup"] = {
            d: round(med[d] / med[f"{d}_xla"], 3) for d in DEFENSES
        }
        for d in DEFENSES:
            del variants[f"{d}_xla"]
        gc.collect()


def _time_train_epochs(model_name, cfg, record, variants):
    """`train_epoch_s`: one epoch of `fit` on the train command's pipeline (shuffled,
    drop_remainder) per defence, one after the other."""
    steps_per_epoch = MNIST_TRAIN_EXAMPLES // cfg["batch_size"]
    quick = cfg["quick"]
    timed_steps = min(cfg["quick_epoch_steps"], steps_per_epoch) if quick else steps_per_epoch
    epoch = {
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": timed_steps,
        "extrapolated": timed_steps < steps_per_epoch,
        "method": (
            f"fit of {timed_steps} steps: start-up (pipeline, shuffle buffer, first step) "
            f"+ {steps_per_epoch - 1} x the median of the other steps"
            if timed_steps < steps_per_epoch
            else "wall time of one fit epoch (one after the other, not interleaved)"
        ),
        "startup_s": {},
        "steady_step_s": {},
        "cpu_s": {},
        "cpu_cores_used": {},
    }
    ds = data.make_pipeline(
        data.load("mnist", "train"),
        batch_size=cfg["batch_size"],
        shuffle=True,
        seed=cfg["seed"],
        drop_remainder=True,
    )
    with benchlib.Section(f"{model_name}: train epochs ({timed_steps} steps each)") as s:
        for d in DEFENSES:
            clock = _StepClock()
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[d][0].fit(
                ds, epochs=1, steps_per_epoch=timed_steps, verbose=0, shuffle=False,
                callbacks=[clock],
            )
            seconds = time.perf_counter() - start
            cpu_s = time.process_time() - start_cpu
            ends = clock.step_ends
            steps = [b - a for a, b in zip(ends, ends[1:])]
            # Start-up: pipeline, shuffle buffer, first step; the rest is the steady step.
            startup = ends[0] - start
            steady = statistics.median(steps) if steps else ends[0] - clock.begin
            epoch["startup_s"][d] = round(startup, 3)
            epoch["steady_step_s"][d] = round(steady, 4)
            epoch["cpu_s"][d] = round(cpu_s, 1)
            epoch["cpu_cores_used"][d] = round(cpu_s / seconds, 2)
            if epoch["extrapolated"]:
                epoch[d] = round(startup + (steps_per_epoch - 1) * steady, 2)
            else:
                epoch[d] = round(seconds, 2)
            benchlib.log(f"  {d}: {epoch[d]} s/epoch, {epoch['cpu_cores_used'][d]} cores")
    record["sections"]["train_epoch"] = s.record
    record["train_epoch_s"] = epoch


def bench_recipe_steps(model_name, train_arrays, cfg, record):
    """`recipe_step_s`: the compiled TRADES step with each training ingredient, interleaved."""
    from at2l_tf import precision

    ((x, y),) = benchlib.batches(*train_arrays, 1, cfg["batch_size"])
    fixed = tf.data.Dataset.from_tensors((x, y)).repeat()
    policy = precision.POLICY_OF[cfg["recipe_precision"]]

    def build(kwargs):
        keras.utils.set_random_seed(cfg["seed"])
        with precision.policy_scope(policy):
            clf = models.get_model(model_name)
        model = AT2LModel(
            clf, defense="trades", beta=6.0, attack="pgd",
            attack_params={"eps": cfg["eps"], "steps": cfg["train_pgd_steps"]}, seed=cfg["seed"], **kwargs,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.optimizer.build(model.classifier.trainable_weights)
        model.make_train_function()
        it, fn = iter(fixed), model.train_function

        def step():
            return float(fn(it)["loss"])

        return clf, step

    built = {name: build(kwargs) for name, kwargs in RECIPE_VARIANTS.items()}
    with benchlib.Section(f"{model_name}: TRADES steps with the training ingredients ({policy})") as s:
        wall, _, _ = benchlib.interleaved(
            {name: step for name, (_, step) in built.items()},
            repeats=cfg["repeats"], warmup=cfg["warmup"], calls=cfg["train_steps_per_round"],
        )
    med = {name: statistics.median(t) for name, t in wall.items()}
    record["sections"]["recipe_steps"] = s.record
    record["recipe_step_s"] = {
        "params": int(built["plain"][0].count_params()),
        "precision": policy,
        "steps_s": {name: round(v, 4) for name, v in med.items()},
        "ema_over_plain": round(med["ema"] / med["plain"], 3),
        "awp_over_plain": round(med["awp"] / med["plain"], 3),
    }
    del built
    gc.collect()


# Runs the train command as `python -m at2l_tf.train` would, then writes the
# process's peak resident memory (VmHWM, KiB) to the file named in argv[1].
# VmHWM, unlike getrusage's ru_maxrss, does not carry over the parent's peak
# across fork and exec.
_TRAIN_CHILD = """
import runpy, sys
out = sys.argv.pop(1)
try:
    runpy.run_module("at2l_tf.train", run_name="__main__", alter_sys=True)
finally:
    try:
        with open("/proc/self/status") as f:
            peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = ""
    with open(out, "w") as f:
        f.write(peak)
"""


def bench_train_run(model_name, cfg, record):
    """Runs the train command in a child process: its wall time and peak resident memory.

    The default recipe (AT²L, PGD-`--train_pgd_steps`, the final clean/FGSM/PGD-40
    check on 1,000 test images, the SavedModel export) for one epoch, on this
    model; `--quick` trains on 512 images and checks 100. Outputs go to a
    temporary directory. The peak is the child's own (Linux's VmHWM; None
    elsewhere): what a user's training run needs, not this benchmark's process.
    """
    quick = cfg["quick"]
    args = [
        f"--model={model_name}", "--objective=at2l", "--attack=pgd",
        f"--attack_steps={cfg['train_pgd_steps']}", f"--eps={cfg['eps']}", "--epochs=1",
        f"--batch_size={cfg['batch_size']}", f"--seed={cfg['seed']}", "--verbose=2",
        f"--eval_examples={100 if quick else 1000}",
    ]
    if quick:
        args.append("--max_train_examples=512")
    benchlib.log(f"{model_name}: train command (child process) ...")
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak_kib")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _TRAIN_CHILD, peak_file, *args,
             f"--workdir={tmp}/run", f"--export_dir={tmp}/export"],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"the train command failed ({proc.returncode}): {proc.stderr[-2000:]}"
            )
        with open(peak_file) as f:
            peak_kib = f.read().strip()
    benchlib.log(f"{model_name}: train command: {wall:.1f} s")
    record["train_run"] = {
        "command": " ".join(["python", "-m", "at2l_tf.train", *args]),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(int(peak_kib) / 1024, 1) if peak_kib else None,
    }



if __name__ == "__main__":
    benchlib.speed_main("speed_training", [sys.modules[__name__]])
