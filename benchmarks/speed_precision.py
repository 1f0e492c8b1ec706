r"""Mixed precision against float32: `bf16_over_fp32` on this CPU (or `fp16_over_fp32`).

    python benchmarks/speed_precision.py --output_json=benchmarks/results/speed_precision_cpu.json
    python benchmarks/speed_precision.py --quick --output_json=/tmp/precision.json     # < 1 min
    python benchmarks/speed_precision.py --markdown_from=benchmarks/results/speed_precision_cpu.json

For each model (`--models`, default `mnist_small,madry_mnist`), one process
builds a float32 copy and a `--policy` (default `mixed_bfloat16`) copy of the
same architecture with the same weights, and times, round-robin in the same
rounds (order rotated every round, so that load from other processes hits both
alike), on one fixed batch of `--batch_size` (128) real MNIST training images:

* `pgd_input_gradients`: PGD-`--pgd_steps` (10) at eps 0.3 (`at2l_tf.attacks.pgd`
  in one `tf.function`, the classifier in inference mode): the training
  attack's cost, `--pgd_steps` input gradients;
* `train_step`: one compiled adversarial-training step (`AT2LModel`, defense
  `at`, the same PGD-k attack inside), Keras' `train_function` on the batch.

The figure is the speed-up `fp32 time / mixed time` of the medians over
`--repeats` (9) rounds after `--warmup` (2) calls; per-round paired ratios
give its spread. The CPU model and its native-bfloat16 flags (`avx512_bf16`,
`amx_bf16`) are recorded beside it: where they are missing, oneDNN emulates
bfloat16 and the figure falls below 1, which is why `--mixed_precision=auto`
reads the flags (`at2l_tf.precision`).
"""

import functools
import gc
import statistics
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.  # isort: skip
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.fileio import atomic_write_json  # noqa: E402
from at2l_tf.log import log  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["mnist_small", "madry_mnist"], "MNIST models to time.")
flags.DEFINE_string("policy", "mixed_bfloat16", "The mixed policy against float32: mixed_bfloat16 | mixed_float16.")
flags.DEFINE_integer("batch_size", 128, "Images per batch.")
flags.DEFINE_integer("pgd_steps", 10, "PGD steps of the attack and of the training step's attack.")
flags.DEFINE_integer("repeats", 9, "Timed rounds.")
flags.DEFINE_integer("warmup", 2, "Untimed calls of each contender first.")
flags.DEFINE_integer("calls", 2, "Calls per contender per round.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and of the batch.")
flags.DEFINE_bool("quick", False, "mnist_small only, PGD-3, 3 rounds, 1 warm-up, 1 call (a smoke test).")
flags.DEFINE_string("output_json", None, "Where to write the results (atomically).")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")

POLICIES = ("mixed_bfloat16", "mixed_float16")
FIGURES = ("pgd_input_gradients", "train_step")


_log = functools.partial(log, prefix="speed_precision")


def bench_model(name, x, y, policy, cfg):
    """Times float32 and `policy` copies of model `name`; returns its record."""
    import keras
    import tensorflow as tf

    from at2l_tf import attacks, models, precision
    from at2l_tf.training.at2l_model import AT2LModel

    keras.utils.set_random_seed(cfg["seed"])
    fp32 = models.get_model(name)
    with precision.policy_scope(policy):
        mixed = models.get_model(name)
    mixed.set_weights(fp32.get_weights())  # Same weights: only the precision differs.
    pgd = attacks.make_attack("pgd", eps=0.3, steps=cfg["pgd_steps"])
    fixed = tf.data.Dataset.from_tensors((x, y)).repeat()

    def attack_fn(clf):
        @tf.function
        def run(images, labels):
            return pgd(lambda z: tf.cast(clf(z, training=False), tf.float32), images, labels)

        def call():
            return run(x, y).numpy()

        return call

    def step_fn(clf, pol):
        model = AT2LModel(clf, defense="at", attack="pgd",
                          attack_params={"eps": 0.3, "steps": cfg["pgd_steps"]}, seed=cfg["seed"])
        model.compile(optimizer=precision.wrap_optimizer(keras.optimizers.Adam(1e-3), pol))
        model.optimizer.build(model.classifier.trainable_weights)
        model.make_train_function()
        it, fn = iter(fixed), model.train_function

        def call():
            return float(fn(it)["loss"])  # Reading a metric waits for the step.

        return call

    contenders = {
        "pgd_input_gradients/float32": attack_fn(fp32),
        f"pgd_input_gradients/{policy}": attack_fn(mixed),
        "train_step/float32": step_fn(fp32, "float32"),
        f"train_step/{policy}": step_fn(mixed, policy),
    }
    started = time.time()
    wall, cpu, _ = benchlib.interleaved(
        contenders, repeats=cfg["repeats"], warmup=cfg["warmup"], calls=cfg["calls"]
    )
    record = {"seconds": round(time.time() - started, 1), "figures": {}}
    for figure in FIGURES:
        a, b = wall[f"{figure}/float32"], wall[f"{figure}/{policy}"]
        paired = sorted(fa / fb for fa, fb in zip(a, b))
        record["figures"][figure] = {
            "float32_s": round(statistics.median(a), 4),
            "mixed_s": round(statistics.median(b), 4),
            "speedup": round(statistics.median(a) / statistics.median(b), 3),
            "paired_speedup_min_max": [round(paired[0], 3), round(paired[-1], 3)],
            "cpu_speedup": round(
                statistics.median(cpu[f"{figure}/float32"]) / statistics.median(cpu[f"{figure}/{policy}"]), 3
            ),
        }
        _log(f"{name} {figure}: float32 {1000 * statistics.median(a):.0f} ms, {policy} "
             f"{1000 * statistics.median(b):.0f} ms: {record['figures'][figure]['speedup']:.2f}x")
    del contenders
    gc.collect()
    return record


def markdown(record):
    """The table: per model, the two speed-ups with the times and the CPU named."""
    m = record["machine"]
    short = "bf16" if record["policy"] == "mixed_bfloat16" else "fp16"
    lines = [
        f"CPU: {m.get('cpu_model')} (native bfloat16 flags: "
        f"{', '.join(record['native_bf16_flags']) or 'none'}), {m.get('cpu_count')} cores; "
        f"batch {record['config']['batch_size']}, PGD-{record['config']['pgd_steps']}, "
        f"median of {record['config']['repeats']} interleaved rounds.",
        "",
        f"| model | PGD-{record['config']['pgd_steps']} input gradients fp32 / {short} | "
        f"AT train step fp32 / {short} |",
        "| --- | --- | --- |",
    ]
    for name, r in record["models"].items():
        cells = []
        for figure in FIGURES:
            f = r["figures"][figure]
            cells.append(f"{1000 * f['float32_s']:.0f} / {1000 * f['mixed_s']:.0f} ms "
                         f"(**{f['speedup']:.2f}×**)")
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv):
    if benchlib.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    if FLAGS.policy not in POLICIES:
        raise ConfigError(f"unknown policy {FLAGS.policy!r}; known: {', '.join(POLICIES)}")
    names = ["mnist_small"] if FLAGS.quick else FLAGS.models
    benchlib.check_mnist_models(names)
    cfg = {
        "batch_size": FLAGS.batch_size,
        "pgd_steps": 3 if FLAGS.quick else FLAGS.pgd_steps,
        "repeats": 3 if FLAGS.quick else FLAGS.repeats,
        "warmup": 1 if FLAGS.quick else FLAGS.warmup,
        "calls": 1 if FLAGS.quick else FLAGS.calls,
        "seed": FLAGS.seed,
    }
    for name in ("batch_size", "pgd_steps", "repeats", "warmup", "calls"):
        if cfg[name] < 1:
            raise ConfigError(f"{name} must be >= 1, received {name}={cfg[name]}")
    from at2l_tf import data, precision

    hardware = precision.detect_hardware()
    images, labels = data.load_mnist_arrays("train")
    ((x, y),) = benchlib.batches(images, labels, 1, cfg["batch_size"])
    started = time.time()
    record = {
        "benchmark": "speed_precision",
        "policy": FLAGS.policy,
        "config": cfg,
        "native_bf16_flags": list(hardware.native_bf16),
        "auto_resolves_to": precision.resolve("auto", hardware).policy,
        "models": {},
    }
    for name in names:
        _log(f"timing {name}: float32 against {FLAGS.policy}")
        record["models"][name] = bench_model(name, x, y, FLAGS.policy, cfg)
        record.update(benchlib.provenance("speed_precision.py", started))
        if FLAGS.output_json:
            atomic_write_json(FLAGS.output_json, record)
    print(markdown(record))


if __name__ == "__main__":
    cli.run(main, "speed_precision")
