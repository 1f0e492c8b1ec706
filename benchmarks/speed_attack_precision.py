"""APGD-CE, APGD-T and Square searching in float32 and in bfloat16, the `attack_precision`
family of `speed.py`: achieved GFLOP/s and share of the CPU's peak (what it times:
benchmarks/README.md, "What each family times")."""

import os

import benchlib
import keras
import numpy as np
import provenance
import tensorflow as tf
from absl import flags

from at2l_tf import models, precision, savedmodel
from at2l_tf.attacks import apgd, search
from at2l_tf.attacks.square import run_square
from at2l_tf.errors import ConfigError

flags.DEFINE_string("model_dir", None, "attack_precision: SavedModel (train export) or .keras; default "
                    "savedmodels/mnist_reference (--quick: an untrained mnist_small).")
flags.DEFINE_integer("target_classes", None, "attack_precision: APGD-T targets (default 9; --quick: 2).")
flags.DEFINE_integer("square_queries", None, "attack_precision: Square queries (default 1000; --quick: 10).")
flags.DEFINE_float("clock_ghz", None, "attack_precision: core clock of the peak; default /proc/cpuinfo's cpu MHz.")
flags.DEFINE_integer("cores", None, "attack_precision: cores of the peak; default os.cpu_count().")
flags.DEFINE_integer("fp32_flop_per_cycle", None, "attack_precision: float32 FLOP/cycle/core; default by CPU flags.")
flags.DEFINE_integer("bf16_flop_per_cycle", None, "attack_precision: bfloat16 FLOP/cycle/core; default by CPU flags.")

NAME = "attack_precision"
FIGURES = ()
SETTINGS = {"model_dir": ("savedmodels/mnist_reference", None), "batch_size": (128, 16), "apgd_steps": (100, 3),
            "target_classes": (9, 2), "square_queries": (1000, 10), "repeats": (3, 1), "eps": (0.3, 0.3),
            "clock_ghz": None, "cores": None, "fp32_flop_per_cycle": None, "bf16_flop_per_cycle": None}
ATTACKS = ("apgd_ce", "apgd_t", "square")
PRECISIONS = ("float32", "bfloat16")


def configure(cfg):
    if cfg["model_dir"] is not None and not os.path.exists(cfg["model_dir"]):
        raise ConfigError(f"model path does not exist: {cfg['model_dir']}")


def peak(cpu_flags, *, cores=None, clock_ghz=None, fp32=None, bf16=None):
    """The CPU's peak GFLOP/s in float32 and bfloat16, with the assumptions behind them."""
    if "amx_bf16" in cpu_flags:
        rates, why = (64, 1024), "AMX: two 512-bit FMA ports (float32), AMX TMUL 1024 bf16 FLOP/cycle"
    elif "avx512_bf16" in cpu_flags:
        rates, why = (64, 128), ("AVX512_BF16 without AMX: two 512-bit FMA pipes (float32, 16 lanes x 2 FLOP x 2), "
                                 "two VDPBF16PS per cycle (32 bf16 products + sums each); Zen 5 has full 512-bit "
                                 "pipes, Zen 4 half these")
    elif "avx512f" in cpu_flags:
        rates, why = (64, 64), "AVX-512 without native bf16: bfloat16 emulated at float32's rate at best"
    else:
        rates, why = (32, 32), "AVX2: two 256-bit FMA pipes; bfloat16 emulated"
    fp32, bf16, cores = fp32 or rates[0], bf16 or rates[1], cores or os.cpu_count()
    source = "--clock_ghz"
    if clock_ghz is None:
        clock_ghz = float(provenance._cpuinfo().get("cpu MHz", 0)) / 1000 or None
        source = "/proc/cpuinfo cpu MHz (nominal; boost not counted)"
    if not clock_ghz:
        raise ConfigError("cannot read the CPU clock from /proc/cpuinfo: set --clock_ghz")
    return {"cores": cores, "clock_ghz": round(clock_ghz, 3), "clock_source": source,
            "fp32_flop_per_cycle_per_core": fp32, "bf16_flop_per_cycle_per_core": bf16, "assumptions": why,
            "float32_gflops": round(cores * clock_ghz * fp32, 1), "bfloat16_gflops": round(cores * clock_ghz * bf16, 1)}


def profiler_forward_flop_per_image(net, image_shape):
    """TensorFlow's profiler's float-operation count of one image's forward graph."""
    fn = tf.function(lambda x: net(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1,) + tuple(image_shape), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops)


class Counted:
    """`fn` that adds the number of images of each call to `images` (graph-safe)."""

    def __init__(self, fn):
        self.fn, self.images = fn, tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, x):
        self.images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return self.fn(x)

    def take(self):
        n = int(self.images.numpy())
        self.images.assign(0)
        return n


def load(model_dir):
    """`(float32 model_fn, bfloat16 model_fn, Keras network for the FLOP count, its name)`."""
    if model_dir is None:
        keras.utils.set_random_seed(0)
        net = models.get_model("mnist_small")
        copy = precision.search_copy(net, "mixed_bfloat16")
        return (lambda x: net(x, training=False)), (lambda x: copy(x, training=False)), net, "mnist_small (untrained)"
    target = savedmodel.load_classifier(model_dir)
    bf16_fn, _ = savedmodel.search_fns(target)
    return target.model_fn, bf16_fn, bf16_fn.keep, model_dir  # Its layers count the float32 network's FLOPs.


def run_attack(name, model_fn, x, y, cfg):
    common = {"eps": cfg["eps"], "seed": 0}
    if name == "apgd_ce":
        return apgd.run_apgd(model_fn, x, y, loss="ce", steps=cfg["apgd_steps"], **common)
    if name == "apgd_t":
        return apgd.run_apgd(model_fn, x, y, loss="dlr-targeted", steps=cfg["apgd_steps"],
                             target_classes=cfg["target_classes"], **common)
    return run_square(model_fn, x, y, queries=cfg["square_queries"], **common)


def measure(cfg):
    pk = peak(set(provenance._cpuinfo().get("flags", "").split()), cores=cfg["cores"], clock_ghz=cfg["clock_ghz"],
              fp32=cfg["fp32_flop_per_cycle"], bf16=cfg["bf16_flop_per_cycle"])
    load_avg = os.getloadavg()[0]
    f32_fn, bf16_fn, net, model_name = load(cfg["model_dir"])
    ((x, y),) = benchlib.mnist_batches("test", 1, cfg["batch_size"])
    x = tf.constant(x)
    flop = benchlib.forward_flops(net)
    out = {"model": model_name, "forward_flop_per_image": flop,
           "profiler_forward_flop_per_image": profiler_forward_flop_per_image(net, tuple(x.shape[1:])),
           "peak": pk, "loaded": load_avg > pk["cores"], "load_average_1min": round(load_avg, 2), "attacks": {}}
    for name in ATTACKS:
        rec = out["attacks"][name] = {}
        runs = {}  # Precision -> (the model_fn the attack runs on, the search's counter, the judge's).
        for prec in PRECISIONS:
            judge = Counted(f32_fn)
            searcher = judge if prec == "float32" else Counted(bf16_fn)
            runs[prec] = (judge if prec == "float32" else search.SearchModel(searcher, judge), searcher, judge)
        for model_fn, searcher, judge in runs.values():  # Warm-up (tracing); its work is not counted.
            run_attack(name, model_fn, x, y, cfg)
            searcher.take(), judge.take(), getattr(model_fn, "take_rejected", int)()
        calls = {p: (lambda m=m, a=name: np.asarray(run_attack(a, m, x, y, cfg)[0])) for p, (m, _, _) in runs.items()}
        wall, _, last = benchlib.interleaved(calls, repeats=cfg["repeats"], warmup=0)
        for prec, (model_fn, searcher, judge) in runs.items():
            n = cfg["repeats"]
            search_images = searcher.take() // n
            judge_images = judge.take() // n if prec == "bfloat16" else 0
            # APGD: one clean forward pass of the batch per call, every other call a gradient.
            search_flop = search_images * flop if name == "square" else (2 * (search_images - len(x)) + len(x)) * flop
            judge_flop = judge_images * flop
            w = float(np.median(wall[prec]))
            at_peak = search_flop / (pk[f"{prec}_gflops"] * 1e9) + judge_flop / (pk["float32_gflops"] * 1e9)
            robust = int(np.sum(np.argmax(np.asarray(f32_fn(last[prec])), -1) == y))
            rec[prec] = {"wall_s": round(w, 4), "search_images": search_images, "judge_images": judge_images,
                         "search_gflop": round(search_flop / 1e9, 4), "judge_gflop": round(judge_flop / 1e9, 4),
                         "gflops": round((search_flop + judge_flop) / 1e9 / w, 2),
                         "share_of_peak": round(at_peak / w, 4),
                         "rejected": model_fn.take_rejected() // n if prec == "bfloat16" else None, "robust": robust}
            benchlib.log(f"{name} {prec}: {w:.3f} s, {rec[prec]['gflops']} GFLOP/s, "
                         f"{rec[prec]['share_of_peak']:.1%} of peak, robust {robust}/{len(x)}")
        rec["bfloat16_speedup"] = round(rec["float32"]["wall_s"] / rec["bfloat16"]["wall_s"], 3)
    return out


def report(record):
    pk = record["peak"]
    return benchlib.table(record, f"{NAME}: {record['model']}, {record['forward_flop_per_image'] / 1e6:.2f} MFLOP "
                          f"per image forward; peak float32 {pk['float32_gflops']}, bfloat16 {pk['bfloat16_gflops']} "
                          "GFLOP/s" + (" (machine loaded: not a measurement)" if record["loaded"] else ""),
                          record["attacks"])
