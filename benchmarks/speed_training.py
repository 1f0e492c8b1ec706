"""Training cost, the `training` family of `speed.py`: the AT²L step against the AT step, a
`fit` epoch, the train command, the TRADES step with each training ingredient (what each
figure times: benchmarks/README.md, "What each family times")."""

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
import keras
import tensorflow as tf
from absl import flags

from at2l_tf import data, models, precision
from at2l_tf.errors import ConfigError
from at2l_tf.training.at2l_model import AT2LModel
from at2l_tf.training.triplet_regularizer import TripletRegularizer

flags.DEFINE_integer("train_pgd_steps", None, "training: PGD steps of the training attack (default 5; --quick: 3).")
flags.DEFINE_integer("quick_epoch_steps", 3, "training, with --quick: fit steps timed and extrapolated to an epoch.")
flags.DEFINE_enum("recipe_precision", "bfloat16", ["off", "bfloat16"], "training: precision of recipe_step_s.")

NAME = "training"
FIGURES = ("at2l_over_at", "train_epoch_s", "train_run", "recipe_step_s")
TARGETS = {"at2l_over_at": ("<=", 1.05)}
SETTINGS = {"models": benchlib.MNIST_MODELS, "batch_size": None, "repeats": (9, 3), "warmup": (2, 1),
            "calls": (3, 1), "eps": (0.3, 0.3), "seed": None, "xla": (True, False),
            "train_pgd_steps": (5, 3), "quick_epoch_steps": None, "recipe_precision": None}
OBJECTIVES = ("none", "at", "at2l")
RECIPE_VARIANTS = {"plain": {}, "ema": {"ema": 0.995}, "awp": {"awp_gamma": 5e-3},
                   "ema_awp": {"ema": 0.995, "awp_gamma": 5e-3}}
# The rows of its report (the figures' paths in a model's record).
SHOW = ("at2l_over_at", "at_over_none", "triplet_term_s", "train_step_s.", "train_epoch_s.none", "train_epoch_s.at",
        "train_run.", "recipe_step_s.", "xla.train_step_speedup.")
MNIST_TRAIN_EXAMPLES = 55000  # 60,000 minus the default 5,000 validation images.


def configure(cfg):
    if cfg["batch_size"] < 2:  # Triplets need two examples.
        raise ConfigError(f"batch_size must be >= 2, received batch_size={cfg['batch_size']}")
    cfg["xla"] = cfg["xla"] and "at2l_over_at" in cfg["figures"]
    cfg["train_attack"] = f"pgd, {cfg['train_pgd_steps']} steps, step 2.5*eps/steps, random start"
    cfg["train"] = "AT2LModel defaults: lambda1=1, lambda2=0.5, margin=0.5, Adam(1e-3)"
    cfg["recipe"] = (f"trades beta 6, trades_kl {cfg['train_pgd_steps']} steps, Adam(1e-3), precision "
                     f"{cfg['recipe_precision']}; ema 0.995, awp gamma 5e-3 from step 1")


def measure(cfg):
    out, figures = {"models": {}}, cfg["figures"]
    for name in cfg["models"]:
        record = out["models"][name] = {"sections": {}, "xla": {}}
        if {"at2l_over_at", "train_epoch_s"} & set(figures):
            bench_train(name, cfg, record)
        if "train_run" in figures:
            bench_train_run(name, cfg, record)
        if "recipe_step_s" in figures:
            bench_recipe_steps(name, cfg, record)
        gc.collect()
    out["targets"] = benchlib.targets(out["models"], TARGETS, figures)
    return out


def _model(model_name, cfg, objective, policy="float32", jit_compile="auto", **kwargs):
    """`model_name`, untrained (seed `--seed`: the same weights for every variant), in an
    `AT2LModel` with the PGD-`--train_pgd_steps` training attack, compiled with Adam(1e-3)."""
    keras.utils.set_random_seed(cfg["seed"])
    with precision.policy_scope(policy):
        clf = models.get_model(model_name)
    model = AT2LModel(clf, objective=objective, attack="pgd", seed=cfg["seed"],
                      attack_params={"eps": cfg["eps"], "steps": cfg["train_pgd_steps"]}, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    return model


def _triplet_term_s(cfg, num_classes, repeats=50):
    """Seconds of the λ2 term alone (Eq. 2, forward and backward) on one batch of logits: all
    the work AT²L adds to an AT step (its negatives' logits come from the clean pass)."""
    bs, seed = cfg["batch_size"], cfg["seed"]
    reg = TripletRegularizer(0.5, 0.5, num_classes, seed=seed)
    labels = tf.random.stateless_uniform((bs,), (seed, 2), 0, num_classes, tf.int32)
    clean = tf.random.stateless_normal((bs, num_classes), (seed, 3))
    adv = tf.random.stateless_normal((bs, num_classes), (seed, 4))
    k = tf.constant(float(bs))

    @tf.function
    def term(clean, adv):
        with tf.GradientTape() as tape:
            tape.watch([clean, adv])
            reg(labels, clean, adv, k)
            loss = tf.add_n(reg.losses)
        return tape.gradient(loss, [clean, adv])

    wall, _, _ = benchlib.interleaved({"triplet": lambda: term(clean, adv)[0].numpy()}, repeats=repeats, warmup=2)
    return statistics.median(wall["triplet"])


def bench_train(model_name, cfg, record):
    """The step times of none / AT / AT²L (`at2l_over_at`) and one epoch of each (`train_epoch_s`)."""
    ((x, y),) = benchlib.mnist_batches("train", 1, cfg["batch_size"])
    models_ = {d: _model(model_name, cfg, d, jit_compile=False) for d in OBJECTIVES}
    steps = {d: benchlib.train_step(m, x, y) for d, m in models_.items()}  # `fit` reuses their functions.
    if "at2l_over_at" in cfg["figures"]:
        _time_train_steps(model_name, cfg, record, models_, steps, x, y)
    if "train_epoch_s" in cfg["figures"]:
        _time_train_epochs(model_name, cfg, record, models_)
    del models_, steps
    gc.collect()


def _time_train_steps(model_name, cfg, record, models_, steps, x, y):
    # Every variant in the same rounds, XLA ones included, so that changes in the
    # machine's load do not show up as differences between them.
    if cfg["xla"]:
        steps.update({f"{d}_xla": benchlib.train_step(_model(model_name, cfg, d, jit_compile=True), x, y)
                      for d in OBJECTIVES})
    with benchlib.section(f"{model_name}: train steps", record["sections"], "train_steps"):
        wall, cpu, _ = benchlib.interleaved(steps, repeats=cfg["repeats"], warmup=cfg["warmup"], calls=cfg["calls"])
    med, med_cpu = benchlib.medians(wall), benchlib.medians(cpu)

    def figures(suffix):
        at, at2l = f"at{suffix}", f"at2l{suffix}"
        return {
            "train_step_s": {d: round(med[d + suffix], 4) for d in OBJECTIVES},
            "train_step_cpu_s": {d: round(med_cpu[d + suffix], 4) for d in OBJECTIVES},
            "train_step_rounds_s": {d: [round(v, 4) for v in wall[d + suffix]] for d in OBJECTIVES},
            "at2l_over_at": round(med[at2l] / med[at], 3),
            "at2l_over_at_paired": round(statistics.median(b / a for a, b in zip(wall[at], wall[at2l])), 3),
            "at2l_over_at_cpu": round(med_cpu[at2l] / med_cpu[at], 3),
            "at_over_none": round(med[at] / med[f"none{suffix}"], 3),
        }

    record.update(figures(""))
    triplet_s = _triplet_term_s(cfg, int(models_["at"].num_classes))
    record["triplet_term_s"] = round(triplet_s, 6)
    record["at2l_over_at_expected"] = round((med["at"] + triplet_s) / med["at"], 4)
    if cfg["xla"]:
        record["xla"].update(figures("_xla"))
        record["xla"]["train_step_speedup"] = {d: round(med[d] / med[f"{d}_xla"], 3) for d in OBJECTIVES}


def _time_train_epochs(model_name, cfg, record, models_):
    """One epoch of `fit` on the train command's pipeline (shuffled, drop_remainder) per defence."""
    steps_per_epoch = MNIST_TRAIN_EXAMPLES // cfg["batch_size"]
    timed = min(cfg["quick_epoch_steps"], steps_per_epoch) if cfg["quick"] else steps_per_epoch
    extrapolated = timed < steps_per_epoch
    epoch = {
        "steps_per_epoch": steps_per_epoch, "timed_steps": timed, "extrapolated": extrapolated,
        "method": (f"fit of {timed} steps: start-up (pipeline, shuffle buffer, first step) + "
                   f"{steps_per_epoch - 1} x the median of the other steps" if extrapolated
                   else "wall time of one fit epoch (one after the other, not interleaved)"),
        "startup_s": {}, "steady_step_s": {}, "cpu_s": {}, "cpu_cores_used": {},
    }
    ds = data.make_pipeline(data.load("mnist", "train"), batch_size=cfg["batch_size"], shuffle=True,
                            seed=cfg["seed"], drop_remainder=True)
    with benchlib.section(f"{model_name}: train epochs ({timed} steps each)", record["sections"], "train_epoch"):
        for d in OBJECTIVES:
            clock = benchlib.step_clock()
            start, start_cpu = time.perf_counter(), time.process_time()
            models_[d].fit(ds, epochs=1, steps_per_epoch=timed, verbose=0, shuffle=False, callbacks=[clock])
            seconds, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
            ends = clock.ends
            steps = [b - a for a, b in zip(ends, ends[1:])]
            startup = ends[0] - start  # Pipeline, shuffle buffer, first step.
            steady = statistics.median(steps) if steps else ends[0] - clock.begin
            epoch["startup_s"][d], epoch["steady_step_s"][d] = round(startup, 3), round(steady, 4)
            epoch["cpu_s"][d], epoch["cpu_cores_used"][d] = round(cpu_s, 1), round(cpu_s / seconds, 2)
            epoch[d] = round(startup + (steps_per_epoch - 1) * steady if extrapolated else seconds, 2)
            benchlib.log(f"  {d}: {epoch[d]} s/epoch, {epoch['cpu_cores_used'][d]} cores")
    record["train_epoch_s"] = epoch


def bench_recipe_steps(model_name, cfg, record):
    """`recipe_step_s`: the compiled TRADES step with each training ingredient, interleaved."""
    ((x, y),) = benchlib.mnist_batches("train", 1, cfg["batch_size"])
    policy = precision.POLICY_OF[cfg["recipe_precision"]]
    built = {v: _model(model_name, cfg, "trades", policy, beta=6.0, **kw) for v, kw in RECIPE_VARIANTS.items()}
    with benchlib.section(f"{model_name}: TRADES steps ({policy})", record["sections"], "recipe_steps"):
        wall, _, _ = benchlib.interleaved({v: benchlib.train_step(m, x, y) for v, m in built.items()},
                                          repeats=cfg["repeats"], warmup=cfg["warmup"], calls=cfg["calls"])
    med = benchlib.medians(wall)
    record["recipe_step_s"] = {
        "params": int(built["plain"].classifier.count_params()), "precision": policy,
        "steps_s": {v: round(t, 4) for v, t in med.items()},
        "ema_over_plain": round(med["ema"] / med["plain"], 3),
        "awp_over_plain": round(med["awp"] / med["plain"], 3),
    }


# Runs the train command as `python -m at2l_tf.train` would, then writes the process's peak
# resident memory (VmHWM, KiB) to the file named in argv[1]. VmHWM, unlike getrusage's
# ru_maxrss, does not carry over the parent's peak across fork and exec.
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
    """`train_run`: the train command in a child process, outputs in a temporary directory."""
    quick = cfg["quick"]
    args = [f"--model={model_name}", "--objective=at2l", "--attack=pgd", f"--attack_steps={cfg['train_pgd_steps']}",
            f"--eps={cfg['eps']}", "--epochs=1", f"--batch_size={cfg['batch_size']}", f"--seed={cfg['seed']}",
            "--verbose=2", f"--eval_examples={100 if quick else 1000}"] + ["--max_train_examples=512"] * quick
    benchlib.log(f"{model_name}: train command (child process) ...")
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak_kib")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, peak_file, *args, f"--workdir={tmp}/run",
                               f"--export_dir={tmp}/export"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"the train command failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with open(peak_file) as f:
            peak_kib = f.read().strip()
    benchlib.log(f"{model_name}: train command: {wall:.1f} s")
    record["train_run"] = {"command": " ".join(["python", "-m", "at2l_tf.train", *args]), "wall_s": round(wall, 1),
                           "peak_rss_mb": round(int(peak_kib) / 1024, 1) if peak_kib else None}
