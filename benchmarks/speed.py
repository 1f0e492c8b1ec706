r"""Speed of the AT²L training step and of our attacks, against IBM ART, eager CleverHans
and Foolbox.

    python benchmarks/speed.py --output_json=benchmarks/results/speed_cpu.json  # ~20 min, 2 CPUs
    python benchmarks/speed.py --quick --output_json=/tmp/speed.json            # < 1 min
    python benchmarks/speed.py --figures=apgd_vs_art,pgd_vs_foolbox \
        --output_json=benchmarks/results/speed_attacks_cpu.json                  # ~9 min

`--figures` (default: all) measures only the figures named (the list below;
`train_epoch_s` and `train_run` count as figures); an unknown name stops the
run with a one-line error before any work, and nothing is written.

Runs on the CPU (`--device=cpu`, the default, hides any GPU), in one process, on
the same models (`--models`, default `mnist_small,madry_mnist`), the same batch
size (`--batch_size`, 128) and real MNIST (the copy shipped with the package:
training batches for the training step, test batches for the attacks). Every
figure is the median over `--repeats` (9) timed rounds after `--warmup` (2)
untimed calls. The contenders of a ratio are timed round-robin in the same
rounds (order rotated each round), so that load from other processes hits
them alike; CPU-time ratios are recorded next to the wall-time ones as a
cross-check that depends less on that load.

`--quick` (the test runs it): `mnist_small` only, 3 rounds, 1 warm-up, PGD-3
for training and attacks, APGD-10, 1 batch, epoch extrapolated, no XLA.

Figures, per model (the JSON keys under `models.<name>`):

* `at2l_over_at`: one AT²L training step over one AT step, both the compiled
  `AT2LModel.train_step` (Keras' `train_function` on a fixed batch) with the
  same PGD-`--train_pgd_steps` (5) attack. Target <= 1.05: the triplet term
  reuses the clean logits. `triplet_term_s` times that term alone (forward
  and backward) and `at2l_over_at_expected` = (AT step + it) / AT step.
* `pgd_efficiency`: our PGD-k (`at2l_tf.attacks.pgd`, k = `--pgd_steps` (10),
  in one `tf.function` as `evaluation` compiles it) over k calls of one input
  gradient `∇x CE(model(x, training=False), y)` in its own `tf.function`, the
  floor. Target <= 1.15. `pgd_breakdown` splits PGD into gradients, the
  sign/projection ops alone, and the rest.
* `fgsm_vs_art`, `pgd_vs_art`: images/s of our FGSM and PGD-k over ART 1.20's
  `FastGradientMethod` / `ProjectedGradientDescent` on a `TensorFlowV2Classifier`
  wrapping the same Keras model; same eps (0.3), step size (`2.5 eps / k`), k,
  batch size, labels, and one random start for PGD (none for FGSM). Both sides
  take and return NumPy images; ART's time includes what its `generate` always
  does (PGD's success-rate pass). Targets >= 2 and >= 3. `null`, with a
  top-level `"skipped"` note, when ART is not installed.
* `pgd_vs_cleverhans_eager`: images/s of our compiled PGD-k over CleverHans'
  `projected_gradient_descent` called eagerly in a Python loop over batches, as
  its tutorial does (same eps, step, k, labels, clip box and random start, so
  the work is identical; only compilation differs). Target >= 2.
* `pgd_vs_foolbox`: images/s of our compiled PGD-k over Foolbox 3.3's
  `LinfPGD(steps=k, rel_stepsize=2.5/k, random_start=True)` (0.25 for k = 10)
  on `foolbox.TensorFlowModel(model, bounds=(0, 1))`, called per batch as its
  documentation does, `attack(fmodel, x, y, epsilons=eps)`, with the true
  labels; timed in the same rounds as the PGD figures above. Its time includes
  what that call always does (an input-bounds check, and one forward pass to
  tell which outputs are adversarial). Target >= 2. `null` when Foolbox is not
  installed.
* `apgd_vs_art`: images/s of our `apgd_ce` (`--apgd_steps` (100) iterations,
  1 restart, initial step 2 eps, seed `--seed`, called eagerly as `evaluate`
  does) over ART 1.20's `AutoProjectedGradientDescent` (L-inf, `eps_step` 2 eps,
  same iterations, `nb_random_init=1`, `loss_type="cross_entropy"`, untargeted,
  `batch_size` the batch) on the `TensorFlowV2Classifier` above, on one batch
  of 128 test images, in rounds of their own. Labels: the model's predictions,
  so that both attack every image for every iteration (both skip images
  already misclassified when a run starts, neither stops within a run; with
  the true labels the untrained model is right on ~10% of the batch).
  `apgd_labels` records this. ART's APGD computes the loss once more per
  iteration (a forward pass apart from its gradient's); ours takes it from the
  gradient's forward pass. Target >= 3.
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
* also `train_step_s`, attack seconds per batch, `images_per_s`, `validity`
  (every contender's `max ||x_adv - x||_inf <= eps`, inside [0, 1], loss
  raised, `error_adv` the share misclassified), `apgd_vs_art_cpu` and
  `pgd_vs_foolbox_cpu` (the same ratios in CPU time), and under `xla` the same
  steps and attacks compiled with `jit_compile=True`, timed in the same rounds
  as the plain ones.

Where the time goes, and what bounds each ratio: `profile_attacks.py`.

Top level: `machine` (platform, CPUs, CPU model, family and SIMD flags, the
oneDNN setting), `git_commit`, `load` (load averages; each
entry of `models.<name>.sections` also has the cores this process got, since
other jobs may share the machine), `versions`, `settings`, `date`, `command`,
`targets` (the measured ones: value per model and pass/fail; a target passes
when every model meets it), `peak_rss_mb` (peak resident memory of the
benchmark's own process), `skipped` (which peer libraries were missing, when
one was), `settings.figures` (the figures measured).
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
import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, cli, data, models
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json
from at2l_tf.training.at2l_model import AT2LModel
from at2l_tf.training.triplet_regularizer import TripletRegularizer

flags.DEFINE_bool(
    "quick", False, "Short run (< 1 min): mnist_small, 3 rounds, PGD-3, epoch extrapolated."
)
flags.DEFINE_string("output_json", None, "Where to write the results JSON.")
flags.DEFINE_list("models", None, "Models (default mnist_small,madry_mnist; --quick: mnist_small).")
flags.DEFINE_integer("batch_size", 128, "Examples per batch, everywhere.")
flags.DEFINE_integer("repeats", None, "Timed rounds per figure (default 9; --quick: 3).")
flags.DEFINE_integer("warmup", None, "Untimed calls before timing (default 2; --quick: 1).")
flags.DEFINE_integer(
    "train_steps_per_round", None, "Training steps per timed round (default 3; --quick: 1)."
)
flags.DEFINE_integer(
    "attack_batches", None, "Batches per attack-throughput round (default 2; --quick: 1)."
)
flags.DEFINE_float("eps", 0.3, "L-inf radius of every attack.")
flags.DEFINE_integer(
    "train_pgd_steps", None, "PGD steps of the training attack (default 5; --quick: 3)."
)
flags.DEFINE_integer(
    "pgd_steps", None, "PGD steps k of the attack figures (default 10; --quick: 3)."
)
flags.DEFINE_bool(
    "train_run", True, "Also run the train command once per model, for its peak memory."
)
flags.DEFINE_integer(
    "quick_epoch_steps", 3, "With --quick: fit steps timed and extrapolated to an epoch."
)
flags.DEFINE_bool(
    "xla", None, "Also time attacks and train steps with jit_compile=True (default: not --quick)."
)
flags.DEFINE_enum(
    "device", "cpu", ["cpu", "gpu"], "cpu hides every GPU; gpu uses TensorFlow's default."
)
flags.DEFINE_integer("seed", 0, "Seed of weights, data order and random starts.")
flags.DEFINE_integer(
    "apgd_steps", None, "APGD iterations of apgd_vs_art (default 100; --quick: 10)."
)
flags.DEFINE_list(
    "figures", None,
    "Figures to measure, comma-separated (default: all): at2l_over_at, pgd_efficiency, "
    "fgsm_vs_art, pgd_vs_art, pgd_vs_cleverhans_eager, apgd_vs_art, pgd_vs_foolbox, "
    "train_epoch_s, train_run.",
)
FLAGS = flags.FLAGS

TARGETS = benchlib.TARGETS
# Every figure --figures can pick: the targets, then the training epoch and the train command.
FIGURES = (*TARGETS, "train_epoch_s", "train_run")
# Figures that compare with another library: that library (None when not installed) and
# the note recorded instead of the figure.
PEERS = {
    "fgsm_vs_art": "art",
    "pgd_vs_art": "art",
    "apgd_vs_art": "art",
    "pgd_vs_foolbox": "foolbox",
}
PEER_NOTES = {"art": benchlib.ART_NOTE, "foolbox": benchlib.FOOLBOX_NOTE}
# The PGD-k figures of `bench_attacks` and the contenders each one times (side by side).
ATTACK_FIGURES = {
    "pgd_efficiency": ("ours_pgd", "input_grad_x_k", "pgd_update_ops_x_k"),
    "fgsm_vs_art": ("ours_fgsm", "art_fgsm"),
    "pgd_vs_art": ("ours_pgd", "art_pgd"),
    "pgd_vs_cleverhans_eager": ("ours_pgd", "cleverhans_eager_pgd"),
    "pgd_vs_foolbox": ("ours_pgd", "foolbox_pgd"),
}
DEFENSES = ("none", "at", "at2l")
MNIST_TRAIN_EXAMPLES = 55000  # 60,000 minus the default 5,000 validation images.


# ----------------------------------------------------------------- timing


def _rounded(times, digits=4):
    return {name: [round(v, digits) for v in t] for name, t in times.items()}


class Section:
    """Wall time, CPU time and load average around one part of the benchmark."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.load = os.getloadavg()[0]
        _log(f"{self.name} ...")
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
        _log(f"{self.name}: {wall:.1f} s, {self.record['cpu_cores_used']} cores")
        return False


def _log(msg):
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ setup


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
    with Section(f"{model_name}: train steps") as s:
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
    with Section(f"{model_name}: train epochs ({timed_steps} steps each)") as s:
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
            _log(f"  {d}: {epoch[d]} s/epoch, {epoch['cpu_cores_used'][d]} cores")
    record["sections"]["train_epoch"] = s.record
    record["train_epoch_s"] = epoch


def _linf_check(x, x_adv, y, model, eps):
    """Validity of adversarials: inside the eps ball and the box, and the loss raised.

    Also `error_adv`, the share of `x_adv` misclassified (against the labels `y`).
    """
    delta = float(np.max(np.abs(x_adv.astype(np.float64) - x.astype(np.float64))))

    def ce_and_error(z):
        logits = model(tf.constant(z), training=False)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        error = np.mean(np.argmax(logits.numpy(), axis=-1) != y)
        return float(ce), float(error)

    ce_adv, error_adv = ce_and_error(x_adv)
    return {
        "max_linf": round(delta, 6),
        # Float32 rounding of x + eta may overshoot eps by an ulp.
        "in_eps_ball": delta <= eps + 1e-6,
        "in_box": bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
        "ce_clean": round(ce_and_error(x)[0], 4),
        "ce_adv": round(ce_adv, 4),
        "error_adv": round(error_adv, 4),
    }


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
        f"--model={model_name}", "--defense=at2l", "--attack=pgd",
        f"--attack_steps={cfg['train_pgd_steps']}", f"--eps={cfg['eps']}", "--epochs=1",
        f"--batch_size={cfg['batch_size']}", f"--seed={cfg['seed']}", "--verbose=2",
        f"--eval_examples={100 if quick else 1000}",
    ]
    if quick:
        args.append("--max_train_examples=512")
    _log(f"{model_name}: train command (child process) ...")
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
    _log(f"{model_name}: train command: {wall:.1f} s")
    record["train_run"] = {
        "command": " ".join(["python", "-m", "at2l_tf.train", *args]),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(int(peak_kib) / 1024, 1) if peak_kib else None,
    }


def _attack_model(model_name, cfg):
    """The untrained model every attack figure runs on (seed `--seed`), and its `model_fn`."""
    keras.utils.set_random_seed(cfg["seed"])
    clf = models.get_model(model_name)

    def model_fn(z):
        return clf(z, training=False)

    return clf, model_fn


def _record_attack_times(record, wall, cpu, n_images, n_batches, not_attacks=()):
    """Adds contenders' seconds per batch, rounds and images/s to `record` (merging).

    Returns `({name: median seconds per round}, {name: images/s})`.
    """
    sec = {name: statistics.median(t) for name, t in wall.items()}
    record.setdefault("attack_s_per_batch", {}).update(
        {n: round(v / n_batches, 5) for n, v in sec.items()}
    )
    record.setdefault("attack_cpu_s_per_batch", {}).update(
        {n: round(statistics.median(t) / n_batches, 5) for n, t in cpu.items()}
    )
    record.setdefault("attack_rounds_s", {}).update(_rounded(wall))
    ips = {n: n_images / v for n, v in sec.items() if not n.startswith(not_attacks)}
    record.setdefault("images_per_s", {}).update({n: round(v, 1) for n, v in ips.items()})
    return sec, ips


def _record_validity(record, model_name, checks):
    """Adds the contenders' validity checks to `record`; raises if one is not a valid attack."""
    record.setdefault("validity", {}).update(checks)
    bad = [n for n, v in checks.items() if not (v["in_eps_ball"] and v["in_box"])]
    if bad:
        raise AssertionError(f"{model_name}: invalid adversarials from {bad}: {checks}")


def bench_attacks(model_name, test_arrays, cfg, record, figures, peers):
    """PGD against its floor, and attack throughput against ART, eager CleverHans and Foolbox.

    Times, side by side, the contenders of the `ATTACK_FIGURES` among
    `figures` whose peer library (`peers`, name -> module or None) is installed;
    a figure whose peer is missing is recorded as None.
    """
    clf, model_fn = _attack_model(model_name, cfg)
    k, eps, bs = cfg["pgd_steps"], cfg["eps"], cfg["batch_size"]
    step = 2.5 * eps / k  # at2l_tf's default PGD step, given to every contender explicitly.
    batches = benchlib.batches(*test_arrays, cfg["attack_batches"], bs)
    n_images = sum(len(b[1]) for b in batches)
    x_all = np.concatenate([b[0] for b in batches])
    y_all = np.concatenate([b[1] for b in batches])

    wanted = [f for f in ATTACK_FIGURES if f in figures]
    timed = [f for f in wanted if f not in PEERS or peers[PEERS[f]] is not None]
    for f in wanted:
        if f not in timed:
            record[f] = None  # Its peer is not installed.
    if not timed:
        return

    def compiled(attack_fn, jit_compile=False):
        # As evaluation._compiled does: one graph per batch shape.
        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def run(x, y):
            return attack_fn(model_fn, x, y)

        return run

    def input_grad(jit_compile=False):
        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))
                )
            return tape.gradient(loss, x)

        return grad

    def ours(run):
        # NumPy batches in, NumPy adversarials out, as ART's generate.
        return lambda: np.concatenate([run(x, y).numpy() for x, y in batches])

    def k_grads(grad):
        # The floor of PGD-k: k input gradients per batch, one call each.
        def go():
            for x, y in batches:
                x = tf.constant(x)
                for _ in range(k):
                    g = grad(x, y).numpy()
            return g

        return go

    def update_ops():
        # PGD-k minus its gradients: k sign steps and projections, one graph.
        g = tf.random.stateless_normal((bs, *clf.input_shape[1:]), seed=(cfg["seed"], 1))

        @tf.function(reduce_retracing=True)
        def run(x):
            x_adv = x
            for _ in range(k):
                x_adv = tf.clip_by_value(x_adv + step * tf.sign(g), 0.0, 1.0)
                x_adv = tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), 0.0, 1.0)
            return x_adv

        return lambda: np.concatenate([run(x).numpy() for x, _ in batches])

    def cleverhans_eager():
        # The CleverHans tutorial's loop, with our PGD's box, labels and random start.
        return lambda: np.concatenate(
            [benchlib.cleverhans_eager_pgd(clf, x, y, eps, step, k) for x, y in batches]
        )

    def art_attack(index):
        # ART's generate takes all images and batches them itself (batch_size = ours).
        attack = benchlib.art_attacks(peers["art"], clf, eps, step, k, bs)[index]
        return lambda: attack.generate(x_all, y_all)

    def foolbox():
        # Foolbox has no batching of its own: one call per batch, as ours.
        run = benchlib.foolbox_pgd(peers["foolbox"], clf, eps, step, k)
        return lambda: np.concatenate([run(x, y) for x, y in batches])

    pgd_fn = attacks.make_attack("pgd", eps=eps, steps=k, step_size=step)
    builders = {  # In this order in the rounds (rotated each round).
        "ours_fgsm": lambda: ours(compiled(attacks.make_attack("fgsm", eps=eps))),
        "ours_pgd": lambda: ours(compiled(pgd_fn)),
        "input_grad_x_k": lambda: k_grads(input_grad()),
        "pgd_update_ops_x_k": update_ops,
        "cleverhans_eager_pgd": cleverhans_eager,
        "art_fgsm": lambda: art_attack(0),
        "art_pgd": lambda: art_attack(1),
        "foolbox_pgd": foolbox,
        "ours_pgd_xla": lambda: ours(compiled(pgd_fn, jit_compile=True)),
        "input_grad_x_k_xla": lambda: k_grads(input_grad(jit_compile=True)),
    }
    needed = {c for f in timed for c in ATTACK_FIGURES[f]}
    xla = cfg["xla"] and "pgd_efficiency" in timed
    if xla:
        needed |= {"ours_pgd_xla", "input_grad_x_k_xla"}
    contenders = {name: build() for name, build in builders.items() if name in needed}

    with Section(f"{model_name}: attacks") as s:
        wall, cpu, outputs = benchlib.interleaved(contenders, repeats=cfg["repeats"], warmup=cfg["warmup"])
    record["sections"]["attacks"] = s.record
    not_attacks = ("input_grad", "pgd_update_ops")
    per_batch = len(batches)
    sec, ips = _record_attack_times(record, wall, cpu, n_images, per_batch, not_attacks)
    if "pgd_efficiency" in timed:
        record["pgd_efficiency"] = round(sec["ours_pgd"] / sec["input_grad_x_k"], 3)
        record["pgd_efficiency_cpu"] = round(
            statistics.median(cpu["ours_pgd"]) / statistics.median(cpu["input_grad_x_k"]), 3
        )
        record["pgd_breakdown"] = {
            "k": k,
            "input_grads_s_per_batch": round(sec["input_grad_x_k"] / per_batch, 5),
            "update_ops_s_per_batch": round(sec["pgd_update_ops_x_k"] / per_batch, 5),
            "rest_s_per_batch": round(
                (sec["ours_pgd"] - sec["input_grad_x_k"] - sec["pgd_update_ops_x_k"]) / per_batch,
                5,
            ),
        }
        if "cleverhans_eager_pgd" in sec:
            # What eager execution adds to each PGD step over our one graph.
            record["pgd_breakdown"]["cleverhans_eager_overhead_s_per_step"] = round(
                (sec["cleverhans_eager_pgd"] - sec["ours_pgd"]) / (per_batch * k), 5
            )
    for figure, (mine, theirs) in (
        ("pgd_vs_cleverhans_eager", ("ours_pgd", "cleverhans_eager_pgd")),
        ("fgsm_vs_art", ("ours_fgsm", "art_fgsm")),
        ("pgd_vs_art", ("ours_pgd", "art_pgd")),
        ("pgd_vs_foolbox", ("ours_pgd", "foolbox_pgd")),
    ):
        if figure in timed:
            record[figure] = round(ips[mine] / ips[theirs], 3)
    if "pgd_vs_foolbox" in timed:  # Cross-check: CPU time, all threads.
        record["pgd_vs_foolbox_cpu"] = round(
            statistics.median(cpu["foolbox_pgd"]) / statistics.median(cpu["ours_pgd"]), 3
        )
    if xla:
        record["xla"].update(
            pgd_efficiency=round(sec["ours_pgd_xla"] / sec["input_grad_x_k_xla"], 3),
            pgd_speedup=round(sec["ours_pgd"] / sec["ours_pgd_xla"], 3),
            input_grad_speedup=round(sec["input_grad_x_k"] / sec["input_grad_x_k_xla"], 3),
        )

    # Every contender made valid adversarials of the same budget (last timed call).
    _record_validity(record, model_name, {
        name: _linf_check(x_all, out, y_all, clf, eps)
        for name, out in outputs.items()
        if not name.startswith(not_attacks)
    })


def bench_apgd(model_name, test_arrays, cfg, record, art):
    """`apgd_vs_art`: our APGD-CE over ART's AutoProjectedGradientDescent, images/s.

    One batch (the first of `bench_attacks`' batches), the same untrained model;
    `--apgd_steps` iterations, one random start, eps `--eps`, initial step
    2 eps, seed `--seed` (ours; ART draws from NumPy's global generator).

    Ours varies from one process to the next here: with oneDNN (at2l_tf's
    default), a `tf.while_loop` around the model's gradient runs, per trace and
    at random, either at the speed of unrolled PGD steps or up to ~1.7x slower
    (mnist_small, 2-core Xeon; not seen with TF_ENABLE_ONEDNN_OPTS=0, nor for
    our unrolled PGD). A run keeps its trace, so all its rounds agree; compare
    `attack_s_per_batch` of `ours_apgd` / 100 with `ours_pgd` / 10 to tell.
    """
    if art is None:
        record["apgd_vs_art"] = None
        return
    clf, model_fn = _attack_model(model_name, cfg)
    n, eps, bs = cfg["apgd_steps"], cfg["eps"], cfg["batch_size"]
    ((x, y_true),) = benchlib.batches(*test_arrays, 1, bs)
    # Labels: the model's own predictions, given to both. Both APGDs leave alone
    # the examples misclassified at the start of a run (ours: `fooled` from the
    # clean logits, then only the rest is gathered and attacked; ART: only its
    # `sample_is_robust` are attacked), and neither stops within a run (ours: a
    # fixed-length `tf.while_loop`; ART: only once every example's loss is
    # exactly 0, which cross-entropy does not reach here); with one restart there
    # is no later run. With its predictions as labels, every one of the 128 images
    # is attacked for all `n` iterations on both sides. With the true labels the
    # untrained model is right on ~10% of the batch: both would attack ~13
    # images, and the ratio would measure per-call overhead instead.
    labels = np.argmax(clf(x, training=False).numpy(), axis=-1).astype(np.int64)
    art_apgd = benchlib.art_apgd(art, clf, eps, n, bs)
    contenders = {
        # Called eagerly, as evaluate calls it (the registry does not compile APGD):
        # each run is one compiled tf.while_loop.
        "ours_apgd": lambda: attacks.apgd_ce(
            model_fn, x, labels, eps=eps, steps=n, restarts=1, seed=cfg["seed"]
        ).numpy(),
        "art_apgd": lambda: art_apgd.generate(x, labels),
    }
    with Section(f"{model_name}: APGD-CE ({n} iterations)") as s:
        wall, cpu, outputs = benchlib.interleaved(
            contenders, repeats=cfg["repeats"], warmup=cfg["warmup"]
        )
    record["sections"]["attacks_apgd"] = s.record
    _, ips = _record_attack_times(record, wall, cpu, len(labels), 1)
    record["apgd_vs_art"] = round(ips["ours_apgd"] / ips["art_apgd"], 3)
    record["apgd_vs_art_cpu"] = round(
        statistics.median(cpu["art_apgd"]) / statistics.median(cpu["ours_apgd"]), 3
    )
    record["apgd_labels"] = {
        "labels": "the model's predictions on the clean batch",
        "attacked": int(len(labels)),
        "clean_accuracy_true_labels": round(float(np.mean(labels == y_true)), 4),
    }
    _record_validity(record, model_name, {
        name: _linf_check(x, out, labels, clf, eps) for name, out in outputs.items()
    })


# ------------------------------------------------------------------ report


def _targets(results, figures):
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


def _table(summary):
    res = summary["models"]
    names = list(res)
    w = max(14, *(len(n) + 2 for n in names))
    lines = []
    m, load = summary["machine"], summary["load"]
    lines.append(
        f"speed: {m['cpu_model']}, {m['cpu_count']} CPUs, "
        f"batch {summary['settings']['batch_size']}, "
        f"median of {summary['settings']['repeats']} rounds"
        + (" (--quick)" if summary["quick"] else "")
        + f"; load avg {load['load_avg_1min_start']} -> {load['load_avg_1min_end']}"
    )
    lines.append(f"{'figure':<28}{'target':>8}" + "".join(f"{n:>{w}}" for n in names))

    def row(label, values, target=""):
        lines.append(f"{label:<28}{target:>8}" + "".join(f"{v:>{w}}" for v in values))

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    def have(*keys):  # Every model's record has this (nested) figure.
        def get(r):
            for key in keys:
                if not isinstance(r, dict) or key not in r:
                    return False
                r = r[key]
            return True

        return all(get(res[n]) for n in names)

    for name in summary["targets"]:
        op, thr = TARGETS[name]
        cells = []
        for n in names:
            v = res[n][name]
            ok = "" if v is None else (" ok" if (v <= thr if op == "<=" else v >= thr) else " MISS")
            cells.append(fmt(v, ".2f") + ok)
        row(name, cells, f"{op}{thr:g}")
    for key, label in (
        ("at2l_over_at_cpu", "at2l_over_at, CPU time"),
        ("at2l_over_at_expected", "at2l_over_at, expected"),
        ("pgd_efficiency_cpu", "pgd_efficiency, CPU time"),
        ("apgd_vs_art_cpu", "apgd_vs_art, CPU time"),
        ("pgd_vs_foolbox_cpu", "pgd_vs_foolbox, CPU time"),
    ):
        if have(key):
            row(label, [fmt(res[n][key], ".3f") for n in names])
    if have("train_step_s"):
        for d in DEFENSES:
            row(f"train step s, {d}", [fmt(res[n]["train_step_s"][d], ".3f") for n in names])
    if have("train_epoch_s"):
        ex = any(res[n]["train_epoch_s"]["extrapolated"] for n in names)
        for d in DEFENSES:
            label = f"train epoch s, {d}" + (" (extrap.)" if ex else "")
            row(label, [fmt(res[n]["train_epoch_s"][d], ".1f") for n in names])
    keys = ["ours_fgsm", "art_fgsm", "ours_pgd", "art_pgd", "cleverhans_eager_pgd", "foolbox_pgd",
            "ours_apgd", "art_apgd"]
    for key in keys:
        if any(key in res[n].get("images_per_s", {}) for n in names):
            row(f"img/s {key}", [fmt(res[n]["images_per_s"].get(key), ".0f") for n in names])
    if have("xla", "pgd_efficiency"):
        row("XLA pgd_efficiency", [fmt(res[n]["xla"]["pgd_efficiency"], ".2f") for n in names])
        row("XLA pgd speed-up", [fmt(res[n]["xla"]["pgd_speedup"], ".2f") for n in names])
    if have("xla", "train_step_speedup"):
        for d in DEFENSES:
            row(
                f"XLA train speed-up, {d}",
                [fmt(res[n]["xla"]["train_step_speedup"][d], ".2f") for n in names],
            )
    if have("train_run"):
        row("train command s", [fmt(res[n]["train_run"]["wall_s"], ".0f") for n in names])
        row("train command peak MB", [fmt(res[n]["train_run"]["peak_rss_mb"], ".0f") for n in names])
    lines.append(f"benchmark peak RSS {summary['peak_rss_mb']:.0f} MB; total {summary['wall_s']:.0f} s")
    if summary.get("skipped"):
        lines.append(f"figures skipped: {summary['skipped']}")
    return "\n".join(lines)


def main(argv):
    del argv
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
        "train_steps_per_round": pick(FLAGS.train_steps_per_round, 3, 1),
        "attack_batches": pick(FLAGS.attack_batches, 2, 1),
        "eps": FLAGS.eps,
        "train_pgd_steps": pick(FLAGS.train_pgd_steps, 5, 3),
        "pgd_steps": pick(FLAGS.pgd_steps, 10, 3),
        "quick_epoch_steps": FLAGS.quick_epoch_steps,
        "xla": pick(FLAGS.xla, True, False),
        "seed": FLAGS.seed,
        "apgd_steps": pick(FLAGS.apgd_steps, 100, 10),
    }
    # Checked first: an unknown name stops the run before any work, nothing written.
    figures = list(FIGURES) if FLAGS.figures is None else [f.strip() for f in FLAGS.figures]
    unknown = [f for f in figures if f not in FIGURES]
    if unknown or not figures:
        what = f"unknown figure {unknown[0]!r}" if unknown else "--figures names no figure"
        raise ConfigError(f"{what}; known figures: {', '.join(FIGURES)}")
    if not FLAGS.train_run and "train_run" in figures:
        figures.remove("train_run")
    figures = [f for f in FIGURES if f in figures]  # Canonical order, no duplicates.
    cfg["train_run"] = "train_run" in figures
    # XLA variants exist only for the train steps and our PGD against its floor.
    cfg["xla"] = cfg["xla"] and bool({"at2l_over_at", "pgd_efficiency"} & set(figures))
    model_names = pick(FLAGS.models, ["mnist_small", "madry_mnist"], ["mnist_small"])
    benchlib.check_mnist_models(model_names)
    for key in ("batch_size", "repeats", "train_steps_per_round", "attack_batches", "pgd_steps",
                "train_pgd_steps", "quick_epoch_steps", "apgd_steps"):
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
        "art": benchlib.import_art() if any(PEERS.get(f) == "art" for f in figures) else None,
        "foolbox": benchlib.import_foolbox() if "pgd_vs_foolbox" in figures else None,
    }
    train = {"at2l_over_at", "train_epoch_s"} & set(figures)
    train_arrays = data.load_mnist_arrays("train") if train else None
    test_arrays = data.load_mnist_arrays("test")

    results = {}
    for name in model_names:
        record = {"sections": {}, "xla": {}}
        if train:
            bench_train(name, train_arrays, cfg, record, figures)
        bench_attacks(name, test_arrays, cfg, record, figures, peers)
        if "apgd_vs_art" in figures:
            bench_apgd(name, test_arrays, cfg, record, peers["art"])
        if cfg["train_run"]:
            bench_train_run(name, cfg, record)
        results[name] = record
        gc.collect()

    k = cfg["pgd_steps"]
    summary = {
        "benchmark": "speed",
        "command": " ".join(["python", "benchmarks/speed.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "machine": {
            **benchlib.machine(),
            "device": FLAGS.device,
            "tf_threads": {  # 0: TensorFlow picks (one per core).
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            },
        },
        "git_commit": benchlib.git_commit(),
        "versions": benchlib.versions(peers["art"], peers["foolbox"]),
        "settings": {
            **{
                key: cfg[key]
                for key in ("batch_size", "repeats", "warmup", "train_steps_per_round",
                            "attack_batches", "eps", "train_pgd_steps", "pgd_steps", "seed", "xla",
                            "train_run", "apgd_steps")
            },
            "figures": figures,
            "quick_epoch_steps": cfg["quick_epoch_steps"] if quick else None,
            "timing": "median over rounds of wall time; contenders interleaved round-robin",
            "data": "MNIST shipped with at2l_tf: train split for training, test split for attacks",
            "train_attack": (
                f"pgd, {cfg['train_pgd_steps']} steps, step 2.5*eps/steps, random start"
            ),
            "train": "AT2LModel defaults: lambda1=1, lambda2=0.5, margin=0.5, Adam(1e-3)",
            "attack_pgd": {"steps": k, "step_size": 2.5 * cfg["eps"] / k, "random_starts": 1},
            "attack_fgsm": {"step_size": cfg["eps"], "random_starts": 0},
            "attack_apgd": {
                "loss": "cross-entropy",
                "steps": cfg["apgd_steps"],
                "restarts": 1,
                "initial_step": 2 * cfg["eps"],
                "seed": cfg["seed"],
                "images": cfg["batch_size"],
                "labels": "the model's predictions (every image attacked, all steps)",
            },
            "models": model_names,
        },
        "models": results,
    }
    missing = [p for p in PEER_NOTES if any(PEERS.get(f) == p for f in figures) and not peers[p]]
    if missing:
        summary["skipped"] = "; ".join(PEER_NOTES[p] for p in missing)
    summary["targets"] = _targets(results, figures)
    summary["peak_rss_mb"] = benchlib.peak_rss_mb()
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
    print(_table(summary))
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)


if __name__ == "__main__":
    cli.run(main, "speed")
