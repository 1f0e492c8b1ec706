r"""APGD-CE, APGD-T and Square searching in float32 and in bfloat16: achieved GFLOP/s
and share of the CPU's peak.

    python benchmarks/speed_attack_precision.py \
        --output_json=benchmarks/results/speed_attack_precision_cpu.json     # idle machine
    python benchmarks/speed_attack_precision.py --quick --output_json=/tmp/p.json  # < 1 min

A script of its own rather than a family of `speed_attacks.py` (peers compared
on untrained models, through `speed.py`'s shared rounds) or of
`profile_attacks.py` (an op profile of PGD): it times our attacks as
`evaluate --attack_precision` runs them, on a real model, and counts their work;
it reuses `profile_attacks.gradient_gflop`'s way of counting.

Set-up: the model of `--model_dir` (default `savedmodels/mnist_reference`, the
shipped TRADES SmallCNN; `--quick`: an untrained `mnist_small`), its first
`--batch_size` (128) MNIST test images with their true labels, eps 0.3, seed 0.
Each attack runs as `evaluate` calls it (`attacks.apgd.run_apgd`,
`attacks.square.run_square`), once per precision:

* `float32`: on the float32 model;
* `bfloat16`: on an `attacks.search.SearchModel`, whose search is the bfloat16
  copy (`savedmodel.search_fns`) and whose verdicts are the float32 model's.

Work is counted, not assumed (APGD-T runs its targets and Square its queries on
the examples not yet fooled): every call of the search and of the judge adds
the images it got to a `tf.Variable` counter. FLOPs per image of one forward
pass (`forward_flop_per_image`) are counted layer by layer (Conv2D and Dense
multiply-adds, 2 FLOP each; `profiler_forward_flop_per_image` is TensorFlow's
own profiler's count of the forward graph, which also counts bias adds,
activations and pooling, as a check). An input gradient is a forward pass plus
a backward pass to the input of the same cost (no weight gradient); APGD's
search calls are gradients but for its one clean forward pass per call, Square's
are forward passes, the judge's are forward passes.

Per attack and precision (`attacks.<attack>.<precision>`): `wall_s` (median
of `--repeats` after one warm-up call), `search_images`, `judge_images`,
`search_gflop`, `judge_gflop`, `gflops` (all the work over `wall_s`),
`share_of_peak` (the time the work would take at the peak rates — search
FLOPs at the search precision's peak, judge FLOPs at float32's — over
`wall_s`), `rejected` (bfloat16: candidates that fooled the copy but not the
float32 model), `robust` (examples left correctly classified, float32 verdict).
`bfloat16_speedup` is float32's wall time over bfloat16's.

Peak (`peak`): cores × clock × FLOP per cycle and core, stated with its
assumptions. Defaults by CPU flags: with `amx_bf16` (Intel Sapphire Rapids and
later) float32 64 (two 512-bit FMA ports) and bfloat16 1024 (AMX TMUL);
with `avx512_bf16` without AMX (AMD Zen 4/5, Intel Cooper Lake) float32 64 and
bfloat16 128 (two 512-bit pipes of VDPBF16PS, 32 bf16 products and sums each;
Zen 5 has two 512-bit FMA pipes, Zen 4 executes 512-bit ops as two halves: half
these); with AVX-512 only, 64 and 64 (bfloat16 emulated); else AVX2 FMA, 32 and
32. The clock is `/proc/cpuinfo`'s `cpu MHz` (on a VM the host's nominal
clock; boost is not counted). `--clock_ghz`, `--fp32_flop_per_cycle`,
`--bf16_flop_per_cycle` and `--cores` override.

Timings on a shared machine are not measurements: the JSON says `loaded` when
the 1-minute load average exceeded the cores at the start.
"""

import os
import statistics
import time

# at2l_tf first: it sets TensorFlow's environment defaults (oneDNN), which
# TensorFlow reads once when it loads.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from at2l_tf import cli, data, models, precision, savedmodel
from at2l_tf.attacks import apgd, search
from at2l_tf.attacks.square import run_square
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Short run for tests: untrained mnist_small, 16 images, "
                  "APGD-3, 2 targets, Square 10 queries, 1 repeat.")
flags.DEFINE_string("output_json", None, "Where to write the results JSON.")
flags.DEFINE_string("model_dir", None, "SavedModel (train export) or .keras; default "
                    "savedmodels/mnist_reference (--quick: an untrained mnist_small).")
flags.DEFINE_integer("batch_size", None, "Images (default 128; --quick: 16).")
flags.DEFINE_integer("apgd_steps", None, "APGD iterations (default 100; --quick: 3).")
flags.DEFINE_integer("target_classes", None, "APGD-T targets (default 9; --quick: 2).")
flags.DEFINE_integer("square_queries", None, "Square queries (default 1000; --quick: 10).")
flags.DEFINE_integer("repeats", None, "Timed calls per attack and precision (default 3; --quick: 1).")
flags.DEFINE_float("eps", 0.3, "L-inf radius.")
flags.DEFINE_float("clock_ghz", None, "Core clock for the peak; default /proc/cpuinfo's cpu MHz.")
flags.DEFINE_integer("cores", None, "Cores for the peak; default os.cpu_count().")
flags.DEFINE_integer("fp32_flop_per_cycle", None, "float32 FLOP per cycle and core; default by CPU flags.")
flags.DEFINE_integer("bf16_flop_per_cycle", None, "bfloat16 FLOP per cycle and core; default by CPU flags.")

ATTACKS = ("apgd_ce", "apgd_t", "square")
PRECISIONS = ("float32", "bfloat16")


def forward_flop_per_image(net):
    """FLOPs of one forward pass of one image: 2 per multiply-add of Conv2D and Dense layers.

    Raises:
        ConfigError: a layer with weights of another kind (its FLOPs are not counted).
    """
    flop = 0
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            flop += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            flop += 2 * n_in * n_out
        elif layer.weights and not isinstance(layer, keras.layers.InputLayer):
            raise ConfigError(
                f"cannot count the FLOPs of layer {layer.name!r} ({type(layer).__name__}); "
                "the count knows Conv2D and Dense layers"
            )
    return int(flop)


def profiler_forward_flop_per_image(net, image_shape):
    """TensorFlow's profiler's float-operation count of one image's forward graph."""
    fn = tf.function(lambda x: net(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1,) + tuple(image_shape), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops)


def peak(cpu_flags, *, cores=None, clock_ghz=None, fp32=None, bf16=None):
    """The CPU's peak GFLOP/s in float32 and bfloat16, with the assumptions behind them."""
    if "amx_bf16" in cpu_flags:
        rates, why = (64, 1024), "AMX: two 512-bit FMA ports (float32), AMX TMUL 1024 bf16 FLOP/cycle"
    elif "avx512_bf16" in cpu_flags:
        rates, why = (64, 128), ("AVX512_BF16 without AMX: two 512-bit FMA pipes (float32, 16 lanes "
                                 "x 2 FLOP x 2), two VDPBF16PS per cycle (32 bf16 products + sums "
                                 "each); Zen 5 has full 512-bit pipes, Zen 4 half these")
    elif "avx512f" in cpu_flags:
        rates, why = (64, 64), "AVX-512 without native bf16: bfloat16 emulated at float32's rate at best"
    else:
        rates, why = (32, 32), "AVX2: two 256-bit FMA pipes; bfloat16 emulated"
    fp32 = fp32 or rates[0]
    bf16 = bf16 or rates[1]
    cores = cores or os.cpu_count()
    source = "--clock_ghz"
    if clock_ghz is None:
        info = benchlib._cpuinfo()
        clock_ghz = float(info.get("cpu MHz", 0)) / 1000 or None
        source = "/proc/cpuinfo cpu MHz (nominal; boost not counted)"
    if not clock_ghz:
        raise ConfigError("cannot read the CPU clock from /proc/cpuinfo: set --clock_ghz")
    return {
        "cores": cores,
        "clock_ghz": round(clock_ghz, 3),
        "clock_source": source,
        "fp32_flop_per_cycle_per_core": fp32,
        "bf16_flop_per_cycle_per_core": bf16,
        "assumptions": why,
        "float32_gflops": round(cores * clock_ghz * fp32, 1),
        "bfloat16_gflops": round(cores * clock_ghz * bf16, 1),
    }


class Counted:
    """`fn` that adds the number of images of each call to `images` (graph-safe)."""

    def __init__(self, fn):
        self.fn = fn
        self.images = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, x):
        self.images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return self.fn(x)

    def take(self):
        n = int(self.images.numpy())
        self.images.assign(0)
        return n


def load(cfg):
    """`(float32 model_fn, bfloat16 model_fn, Keras float32 net, image shape, label)`."""
    if cfg["model_dir"] is None:
        keras.utils.set_random_seed(0)
        net = models.get_model("mnist_small")
        copy = precision.search_copy(net, "mixed_bfloat16")

        def f32_fn(x):
            return net(x, training=False)

        def bf16_fn(x):
            return copy(x, training=False)

        return f32_fn, bf16_fn, net, "mnist_small (untrained)"
    target = savedmodel.load_classifier(cfg["model_dir"])
    bf16_fn, _ = savedmodel.search_fns(target)
    net = bf16_fn.keep  # Its layers count the same FLOPs as the float32 network's.
    return target.model_fn, bf16_fn, net, cfg["model_dir"]


def run_attack(name, model_fn, x, y, cfg):
    common = dict(eps=cfg["eps"], seed=0)
    if name == "apgd_ce":
        return apgd.run_apgd(model_fn, x, y, loss="ce", steps=cfg["apgd_steps"], **common)
    if name == "apgd_t":
        return apgd.run_apgd(model_fn, x, y, loss="dlr-targeted", steps=cfg["apgd_steps"],
                             target_classes=cfg["target_classes"], **common)
    return run_square(model_fn, x, y, queries=cfg["square_queries"], **common)


def measure(cfg, f32_fn, bf16_fn, x, y, flop, pk):
    out = {}
    for name in ATTACKS:
        rec = {}
        for prec in PRECISIONS:
            judge = Counted(f32_fn)
            if prec == "float32":
                searcher = judge
                model_fn = judge
            else:
                searcher = Counted(bf16_fn)
                model_fn = search.SearchModel(searcher, judge)
            run_attack(name, model_fn, x, y, cfg)  # Warm-up: tracing.
            judge.take(), searcher.take()
            if prec == "bfloat16":
                model_fn.take_rejected()
            walls, counts = [], None
            for _ in range(cfg["repeats"]):
                start = time.perf_counter()
                x_adv, _ = run_attack(name, model_fn, x, y, cfg)
                np.asarray(x_adv)
                walls.append(time.perf_counter() - start)
                counts = (searcher.take(), judge.take() if prec == "bfloat16" else 0)
            wall = statistics.median(walls)
            search_images, judge_images = counts
            # APGD: one clean forward pass of the batch per call, every other call a gradient.
            if name == "square":
                search_flop = search_images * flop
            else:
                search_flop = (2 * (search_images - len(x)) + len(x)) * flop
            judge_flop = judge_images * flop
            at_peak = search_flop / (pk[f"{prec}_gflops"] * 1e9) + judge_flop / (pk["float32_gflops"] * 1e9)
            robust = int(np.sum(np.argmax(np.asarray(f32_fn(x_adv)), -1) == y))
            rec[prec] = {
                "wall_s": round(wall, 4),
                "search_images": search_images,
                "judge_images": judge_images,
                "search_gflop": round(search_flop / 1e9, 4),
                "judge_gflop": round(judge_flop / 1e9, 4),
                "gflops": round((search_flop + judge_flop) / 1e9 / wall, 2),
                "share_of_peak": round(at_peak / wall, 4),
                "rejected": model_fn.take_rejected() // cfg["repeats"] if prec == "bfloat16" else None,
                "robust": robust,
            }
            benchlib.log(f"{name} {prec}: {wall:.3f} s, {rec[prec]['gflops']} GFLOP/s, "
                         f"{rec[prec]['share_of_peak']:.1%} of peak, robust {robust}/{len(x)}")
        rec["bfloat16_speedup"] = round(rec["float32"]["wall_s"] / rec["bfloat16"]["wall_s"], 3)
        out[name] = rec
    return out


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    started = time.time()
    quick = FLAGS.quick
    pick = lambda value, full, short: value if value is not None else (short if quick else full)  # noqa: E731
    cfg = {
        "model_dir": FLAGS.model_dir if FLAGS.model_dir is not None else (
            None if quick else "savedmodels/mnist_reference"),
        "batch_size": pick(FLAGS.batch_size, 128, 16),
        "apgd_steps": pick(FLAGS.apgd_steps, 100, 3),
        "target_classes": pick(FLAGS.target_classes, 9, 2),
        "square_queries": pick(FLAGS.square_queries, 1000, 10),
        "repeats": pick(FLAGS.repeats, 3, 1),
        "eps": FLAGS.eps,
    }
    for key in ("batch_size", "apgd_steps", "target_classes", "square_queries", "repeats"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, received {key}={cfg[key]}")
    if not 0 < cfg["eps"] <= 1:
        raise ConfigError(f"eps must be in (0, 1], received eps={cfg['eps']}")
    if cfg["model_dir"] is not None and not os.path.exists(cfg["model_dir"]):
        raise ConfigError(f"model path does not exist: {cfg['model_dir']}")
    cpu_flags = set(benchlib._cpuinfo().get("flags", "").split())
    pk = peak(cpu_flags, cores=FLAGS.cores, clock_ghz=FLAGS.clock_ghz,
              fp32=FLAGS.fp32_flop_per_cycle, bf16=FLAGS.bf16_flop_per_cycle)
    load_avg = os.getloadavg()[0]
    f32_fn, bf16_fn, net, model_name = load(cfg)
    images, labels = data.load_mnist_arrays("test")
    x = tf.constant(images[: cfg["batch_size"]].astype("float32") / 255.0)
    y = labels[: cfg["batch_size"]].astype("int64")
    image_shape = tuple(x.shape[1:])
    flop = forward_flop_per_image(net)
    summary = {
        "benchmark": "speed_attack_precision",
        "quick": quick,
        "model": model_name,
        "settings": cfg,
        "forward_flop_per_image": flop,
        "profiler_forward_flop_per_image": profiler_forward_flop_per_image(net, image_shape),
        "peak": pk,
        "loaded": load_avg > pk["cores"],
        "load_average_1min": round(load_avg, 2),
        "versions": benchlib.versions(None),
        "attacks": measure(cfg, f32_fn, bf16_fn, x, y, flop, pk),
        **benchlib.provenance("speed_attack_precision.py", started),
    }
    print(f"{model_name}: forward {flop / 1e6:.2f} MFLOP/image; peak float32 "
          f"{pk['float32_gflops']} GFLOP/s, bfloat16 {pk['bfloat16_gflops']} GFLOP/s"
          + (" (machine loaded: not a measurement)" if summary["loaded"] else ""))
    print(f"{'attack':8s}{'precision':>10s}{'wall s':>9s}{'GFLOP/s':>9s}{'of peak':>9s}{'rejected':>9s}")
    for name, rec in summary["attacks"].items():
        for prec in PRECISIONS:
            r = rec[prec]
            print(f"{name:8s}{prec:>10s}{r['wall_s']:9.3f}{r['gflops']:9.1f}{r['share_of_peak']:9.1%}"
                  f"{'' if r['rejected'] is None else r['rejected']:>9}")
        print(f"{name:8s}{'bf16 x':>10s}{rec['bfloat16_speedup']:9.2f}")
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)
        benchlib.log(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
    cli.run(main, "speed_attack_precision")
