"""Mixed precision against float32, the `precision` family of `speed.py` (what it times:
benchmarks/README.md, "What each family times")."""

import gc

import benchlib
import keras
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, models, precision
from at2l_tf.errors import ConfigError
from at2l_tf.training.at2l_model import AT2LModel

flags.DEFINE_string("policy", "mixed_bfloat16", "precision: policy against float32: mixed_bfloat16 | mixed_float16.")

NAME = "precision"
FIGURES = ()
SETTINGS = {"models": benchlib.MNIST_MODELS, "batch_size": None, "repeats": (9, 3), "warmup": (2, 1),
            "calls": (2, 1), "pgd_steps": (10, 3), "eps": (0.3, 0.3), "seed": None, "policy": None}
POLICIES = ("mixed_bfloat16", "mixed_float16")
PARTS = ("pgd_input_gradients", "train_step")


def configure(cfg):
    if cfg["policy"] not in POLICIES:
        raise ConfigError(f"unknown policy {cfg['policy']!r}; known: {', '.join(POLICIES)}")


def measure(cfg):
    hardware = precision.detect_hardware()
    ((x, y),) = benchlib.mnist_batches("train", 1, cfg["batch_size"])
    return {"policy": cfg["policy"], "native_bf16_flags": list(hardware.native_bf16),
            "auto_resolves_to": precision.resolve("auto", hardware).policy,
            "models": {name: bench_model(name, x, y, cfg) for name in cfg["models"]}}


def bench_model(name, x, y, cfg):
    """Times float32 and `--policy` copies of model `name`; returns its record."""
    policy = cfg["policy"]
    keras.utils.set_random_seed(cfg["seed"])
    fp32 = models.get_model(name)
    with precision.policy_scope(policy):
        mixed = models.get_model(name)
    mixed.set_weights(fp32.get_weights())  # Same weights: only the precision differs.
    pgd = attacks.make_attack("pgd", eps=cfg["eps"], steps=cfg["pgd_steps"])

    def attack(clf):
        run = tf.function(lambda xb, yb: pgd(lambda z: tf.cast(clf(z, training=False), tf.float32), xb, yb))
        return lambda: run(x, y).numpy()

    def step(clf, pol):
        model = AT2LModel(clf, objective="at", attack="pgd", attack_params={"eps": cfg["eps"], "steps": cfg["pgd_steps"]},
                          seed=cfg["seed"])
        model.compile(optimizer=precision.wrap_optimizer(keras.optimizers.Adam(1e-3), pol))
        return benchlib.train_step(model, x, y)

    sections = {}
    with benchlib.section(f"{name}: float32 against {policy}", sections, "timing"):
        wall, cpu, _ = benchlib.interleaved({
            "pgd_input_gradients/float32": attack(fp32), f"pgd_input_gradients/{policy}": attack(mixed),
            "train_step/float32": step(fp32, "float32"), f"train_step/{policy}": step(mixed, policy),
        }, repeats=cfg["repeats"], warmup=cfg["warmup"], calls=cfg["calls"])
    med, med_cpu = benchlib.medians(wall), benchlib.medians(cpu)
    record = {"seconds": sections["timing"]["wall_s"], "figures": {}}
    for part in PARTS:
        a, b = f"{part}/float32", f"{part}/{policy}"
        paired = sorted(fa / fb for fa, fb in zip(wall[a], wall[b]))
        record["figures"][part] = {
            "float32_s": round(med[a], 4), "mixed_s": round(med[b], 4), "speedup": round(med[a] / med[b], 3),
            "paired_speedup_min_max": [round(paired[0], 3), round(paired[-1], 3)],
            "cpu_speedup": round(med_cpu[a] / med_cpu[b], 3),
        }
    gc.collect()
    return record


def report(record):
    """The table of benchmarks/README.md: per model, the two speed-ups with the times and the CPU."""
    m, cfg = record["machine"], record.get("settings") or record["config"]  # `config`: speed_precision.py's JSONs.
    short = "bf16" if record["policy"] == "mixed_bfloat16" else "fp16"
    lines = [
        f"CPU: {m.get('cpu_model')} (native bfloat16 flags: {', '.join(record['native_bf16_flags']) or 'none'}), "
        f"{m.get('cpu_count')} cores; batch {cfg['batch_size']}, PGD-{cfg['pgd_steps']}, "
        f"median of {cfg['repeats']} interleaved rounds.",
        "",
        f"| model | PGD-{cfg['pgd_steps']} input gradients fp32 / {short} | AT train step fp32 / {short} |",
        "| --- | --- | --- |",
    ]
    for name, r in record["models"].items():
        cells = [f"{1000 * f['float32_s']:.0f} / {1000 * f['mixed_s']:.0f} ms (**{f['speedup']:.2f}×**)"
                 for f in (r["figures"][part] for part in PARTS)]
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    return lines
