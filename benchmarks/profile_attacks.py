r"""Where the time of PGD goes, in ours, eager CleverHans and ART: an op profile and a FLOP floor.

    python benchmarks/profile_attacks.py --output_json=benchmarks/results/profile_attacks_cpu.json
    python benchmarks/profile_attacks.py --quick --output_json=/tmp/profile.json   # < 1 min

`benchmarks/speed.py` says how fast each PGD is; this says why, and how much
faster any implementation could be. Same set-up as speed.py's attack figures:
untrained `--models` (default `mnist_small,madry_mnist`, seed 0), one batch of
`--batch_size` (128) MNIST test images, PGD-k (k = `--pgd_steps`, 10; eps 0.3,
step 2.5 eps / k, one random start, true labels), NumPy in and out, run by

* `ours`: `at2l_tf.attacks.pgd` in one `tf.function`;
* `cleverhans_eager`: CleverHans' `projected_gradient_descent` called eagerly
  (each step's gradient is CleverHans' own `tf.function`, the rest eager ops);
* `art`: ART 1.20's `ProjectedGradientDescent` on a `TensorFlowV2Classifier`
  (skipped, `null`, when ART is not installed: `pip install -e '.[bench]'`).

Per implementation (`models.<name>.implementations.<impl>`):

* `wall_ms`: median of `--repeats` untraced calls after `--warmup`.
* A trace of one more call with TensorFlow's profiler
  (`tf.profiler.experimental`), read from its XPlane protobuf:
  `traced_wall_ms`; `graph_kernel_ms`, the time of the ops run inside
  `tf.function` graphs, split into `model` (ops whose name holds the model's
  name: its forward pass and input gradient) and `other` (the attack's own
  sign, projection, random start); `eager_kernel_ms`, ops run eagerly, one by
  one; `outside_kernels_ms`, the rest of the traced wall time (Python,
  dispatch, NumPy copies); `weight_gradient_ms`, time in
  `Conv2DBackpropFilter` and `BiasAddGrad`, gradients with respect to the
  weights, which an attack never needs; and `by_op_type`, the top op types.
  The profiler adds its own overhead: compare shares, not absolute times,
  with `wall_ms`.

`top_graph_ops` names the graph ops that took longest (summed over calls).

Per model, the floor (`models.<name>.floor`):

* `gradient_gflop`: the floating-point operations of one input gradient of
  the batch, counted from the model's Conv2D and Dense layers (forward plus
  backward to the input, twice the forward count; pooling, activations and the
  loss are left out, so it is a lower bound).
* `matmul_gflops`, `conv_gflops`: the best rates here of a 4096x4096 float32
  `tf.matmul` and of a large convolution (see `peak_gflops`); `peak_gflops`,
  the higher of the two, an upper bound on what a model's kernels sustain.
* `pgd_floor_ms` = k * gradient_gflop / peak_gflops: PGD-k on this model, every
  FLOP at the peak rate, a time no implementation can beat here.
* `ours_gradient_gflops`, the rate ours achieves (k gradients per call);
  `ours_share_of_peak`; `ours_outside_model_share`, the share of our traced
  time not spent in the model's kernels (the most an attack-level change could save).
* Per contender (`cleverhans_eager`, `art`): `ours_over_<impl>`, how much faster
  ours is; `extra_ms_per_step_<impl>`, what it spends per PGD step beyond ours.
  All three run the same model's kernels, so a faster gradient speeds all
  three up, and ours over a contender is (g + extra) / g for a gradient time g.
  For speed.py's target (`target_over_<impl>`: 2x CleverHans, 3x ART),
  `needed_gradient_ms_for_target_over_<impl>` = extra / (target - 1) is the
  gradient time that would meet it, `needed_gflops_for_target_over_<impl>` the
  rate that takes, and `needed_share_of_peak_for_target_over_<impl>` that over
  the peak: above 1, no implementation of the gradient can meet the target here.
"""

import collections
import functools
import glob
import os
import re
import statistics
import sys
import tempfile
import time

# at2l_tf first: it sets TensorFlow's environment defaults (oneDNN), which
# TensorFlow reads once when it loads.
import at2l_tf  # noqa: F401  # isort: skip

import benchlib  # benchmarks/benchlib.py: this script's directory is on sys.path.
import keras
import tensorflow as tf
from absl import flags

from at2l_tf import attacks, cli, data, models
from at2l_tf.errors import ConfigError
from at2l_tf.fileio import atomic_write_json
from at2l_tf.log import log

flags.DEFINE_bool("quick", False, "Short run for tests: mnist_small, PGD-3, 2 repeats.")
flags.DEFINE_string("output_json", None, "Where to write the results JSON.")
flags.DEFINE_list("models", None, "Models (default mnist_small,madry_mnist; --quick: mnist_small).")
flags.DEFINE_integer("batch_size", 128, "Images in the batch.")
flags.DEFINE_integer("pgd_steps", None, "PGD steps k (default 10; --quick: 3).")
flags.DEFINE_integer("repeats", None, "Untraced timed calls (default 7; --quick: 2).")
flags.DEFINE_integer("warmup", 2, "Untraced untimed calls first (tracing, caches).")
flags.DEFINE_float("eps", 0.3, "L-inf radius.")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the images and the random start.")
FLAGS = flags.FLAGS

WEIGHT_GRADIENT_OPS = ("Conv2DBackpropFilter", "BiasAddGrad")
# speed.py's targets for PGD-10 throughput: ours over each contender.
TARGET_SPEEDUPS = {
    "cleverhans_eager": benchlib.TARGETS["pgd_vs_cleverhans_eager"][1],
    "art": benchlib.TARGETS["pgd_vs_art"][1],
}
FLOOR_KEYS = (
    "ours_over", "extra_ms_per_step", "target_over", "needed_gradient_ms_for_target_over",
    "needed_gflops_for_target_over", "needed_share_of_peak_for_target_over",
)
_EAGER_PREFIX = "EagerLocalExecute: "


_log = functools.partial(log, prefix="profile")


# ----------------------------------------------------------------- the trace


def _xplane_pb2():
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as e:  # Moved in some TensorFlow release.
        raise ConfigError(
            f"this TensorFlow ({tf.__version__}) has no tensorflow.tsl.profiler.protobuf."
            "xplane_pb2, which the profile reads"
        ) from e
    return xplane_pb2


def _op_type(name):
    """`_MklNativeFusedConv2D` -> `FusedConv2D`: oneDNN's kernels under TensorFlow's op names."""
    return re.sub(r"^_Mkl(Native)?", "", name)


# A graph op's event: `scope/op_name:OpType` (no `::`, which marks the
# executor's own events such as `ExecutorState::Process`).
_OP_EVENT = re.compile(r"^([^:]+):([A-Za-z_][A-Za-z0-9_]*)$")


def _op_name(name):
    """The op's name without the scopes of the calls that ran it: one name per model op."""
    parts = name.split("/")
    return "/".join(p for p in parts if not re.fullmatch(r"(Stateful)?PartitionedCall(_\d+)?", p))


def _self_times(events, names):
    """`(name, self ms, total ms)` per event of one line; self less the events nested in it.

    Events on a line nest: the executor's `ExecutorState::Process` holds the ops
    it runs, and a call op (`StatefulPartitionedCall`, `While`) holds the ops of
    the function it calls when that runs on the same thread. Self time counts
    each span of the line once. An eager op's event holds the runtime's own
    events (`EagerKernelExecute`), which are part of it: eager ops count total time.
    """
    events = sorted(events, key=lambda e: (e.offset_ps, -e.duration_ps))
    own = [e.duration_ps for e in events]
    stack = []  # Indices of the open events, outermost first.
    for i, e in enumerate(events):
        while stack and events[stack[-1]].offset_ps + events[stack[-1]].duration_ps <= e.offset_ps:
            stack.pop()
        if stack:
            own[stack[-1]] -= e.duration_ps
        stack.append(i)
    return [
        (names.get(e.metadata_id, ""), max(t, 0) / 1e9, e.duration_ps / 1e9)
        for e, t in zip(events, own)
    ]


def trace(fn, model_name):
    """Runs `fn()` once under TensorFlow's profiler; kernel time by kind and op type, in ms.

    Graph ops are the events on the executor threads (`tf_Compute*`), named
    `scope/op_name:OpType`, counted by self time (see `_self_times`); eager ops are `EagerLocalExecute: OpType` on the
    calling thread. A `tf.function` called eagerly shows as an eager event named
    after the function (`__inference_...`), whose ops are already counted as
    graph ops, so those are skipped.
    """
    xplane_pb2 = _xplane_pb2()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        try:
            fn()
        finally:
            traced_wall = time.perf_counter() - start
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no .xplane.pb under {logdir}")
        space = xplane_pb2.XSpace()
        with open(max(paths, key=os.path.getmtime), "rb") as f:
            space.ParseFromString(f.read())

    graph = collections.Counter()  # "model" / "other" -> ms
    eager = 0.0
    by_type = collections.Counter()
    by_name = collections.Counter()  # Graph ops by name, summed over calls and steps.
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            executor = line.name.startswith("tf_Compute")
            for name, ms, total_ms in _self_times(line.events, names):
                op = _OP_EVENT.match(name)
                if executor and op:
                    op_name, op_type = op.groups()
                    graph["model" if model_name in op_name else "other"] += ms
                    by_type[_op_type(op_type)] += ms
                    by_name[_op_name(op_name)] += ms
                elif not executor and name.startswith(_EAGER_PREFIX):
                    op_type = name[len(_EAGER_PREFIX):]
                    if op_type.startswith("__"):  # A tf.function; its ops are graph ops.
                        continue
                    eager += total_ms
                    by_type[_op_type(op_type)] += total_ms
    kernel = sum(graph.values()) + eager
    traced_ms = traced_wall * 1e3
    return {
        "traced_wall_ms": round(traced_ms, 1),
        "graph_kernel_ms": {k: round(graph[k], 1) for k in ("model", "other")},
        "eager_kernel_ms": round(eager, 1),
        "outside_kernels_ms": round(traced_ms - kernel, 1),
        "weight_gradient_ms": round(sum(by_type[t] for t in WEIGHT_GRADIENT_OPS), 1),
        "by_op_type": {t: round(v, 1) for t, v in by_type.most_common(12)},
        "top_graph_ops": {n: round(v, 1) for n, v in by_name.most_common(8)},
    }


# ----------------------------------------------------------------- the floor


def gradient_gflop(model, batch_size):
    """GFLOP of one input gradient: forward plus backward-to-input of Conv2D and Dense layers.

    Each multiply-add is 2 FLOP; backpropagating to a layer's input costs as
    much as its forward pass (for the first layer too: the attack needs ∇x).
    Pooling, activations and the loss are left out (a lower bound).
    """
    forward = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(
            layer, keras.layers.DepthwiseConv2D
        ):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in_per_group, _ = layer.kernel.shape
            forward += 2 * h * w * c_out * kh * kw * c_in_per_group
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            forward += 2 * n_in * n_out
        elif layer.weights and not isinstance(layer, keras.layers.InputLayer):
            raise ConfigError(
                f"cannot count the FLOPs of layer {layer.name!r} ({type(layer).__name__}); "
                "the floor knows Conv2D and Dense layers"
            )
    return 2 * forward * batch_size / 1e9


def _best_gflops(fn, args, flop, repeats):
    fn = tf.function(fn)
    for _ in range(2):
        fn(*args).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - start)
    return flop / min(times) / 1e9


def peak_gflops(repeats=5):
    """The best float32 rates TensorFlow reaches here: `{"matmul": ..., "conv": ...}` GFLOPS.

    A 4096x4096 `tf.matmul` (oneDNN's GEMM), and a 5x5 convolution, 32 -> 64
    channels, 14x14, batch 128 (the Madry CNN's second layer, the fastest kernel
    seen in these profiles). Each is its best over `repeats` calls: the peak is an
    upper bound on what a model's kernels sustain, so the floor built on it is a
    lower bound on time.
    """
    n = 4096
    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    matmul = _best_gflops(tf.linalg.matmul, (a, b), 2 * n**3, repeats)
    x = tf.random.stateless_normal((128, 14, 14, 32), seed=(5, 6))
    w = tf.random.stateless_normal((5, 5, 32, 64), seed=(7, 8))
    conv = _best_gflops(
        lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"), (x, w), 2 * 128 * 14 * 14 * 64 * 25 * 32,
        repeats,
    )
    return {"matmul": matmul, "conv": conv}


# ----------------------------------------------------------------- contenders


def implementations(clf, x, y, eps, k, art):
    """`{name: fn}`; each fn crafts PGD-k adversarials of the NumPy batch and returns NumPy."""
    step = 2.5 * eps / k
    pgd = attacks.make_attack("pgd", eps=eps, steps=k, step_size=step)

    def model_fn(z):
        return clf(z, training=False)

    @tf.function(reduce_retracing=True)
    def ours_compiled(xb, yb):
        return pgd(model_fn, xb, yb)

    fns = {
        "ours": lambda: ours_compiled(x, y).numpy(),
        "cleverhans_eager": lambda: benchlib.cleverhans_eager_pgd(clf, x, y, eps, step, k),
    }
    if art is not None:
        _, art_pgd = benchlib.art_attacks(art, clf, eps, step, k, len(x))
        fns["art"] = lambda: art_pgd.generate(x, y)
    return fns


def profile_model(model_name, test_arrays, cfg, art, peak):
    keras.utils.set_random_seed(cfg["seed"])
    clf = models.get_model(model_name)
    ((x, y),) = benchlib.batches(*test_arrays, 1, cfg["batch_size"])
    k = cfg["pgd_steps"]
    fns = implementations(clf, x, y, cfg["eps"], k, art)

    # Round-robin, as speed.py times them.
    wall, _, _ = benchlib.interleaved(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])

    impls = {}
    for name, fn in fns.items():
        _log(f"{model_name}: tracing {name}")
        impls[name] = {"wall_ms": round(statistics.median(wall[name]) * 1e3, 1), **trace(fn, clf.name)}
    impls.setdefault("art", None)

    gflop = gradient_gflop(clf, len(x))
    peak_rate = max(peak.values())
    floor_ms = k * gflop / peak_rate * 1e3
    ours_ms = impls["ours"]["wall_ms"]
    floor = {
        "gradient_gflop": round(gflop, 3),
        "matmul_gflops": round(peak["matmul"], 1),
        "conv_gflops": round(peak["conv"], 1),
        "peak_gflops": round(peak_rate, 1),
        "pgd_floor_ms": round(floor_ms, 1),
        "ours_gradient_gflops": round(k * gflop / (ours_ms / 1e3), 1),
        "ours_share_of_peak": round(floor_ms / ours_ms, 3),
        # Of the traced call, whose times the profiler's own overhead inflates.
        "ours_outside_model_share": round(
            1 - impls["ours"]["graph_kernel_ms"]["model"] / impls["ours"]["traced_wall_ms"], 3
        ),
    }
    for name, target in TARGET_SPEEDUPS.items():
        rec = impls[name]
        if rec is None:
            floor.update({f"{key}_{name}": None for key in FLOOR_KEYS})
            continue
        extra_ms = (rec["wall_ms"] - ours_ms) / k
        # ours / it = (g + extra) / g for a gradient time g shared by both: the
        # target needs g <= extra / (target - 1).
        needed_ms = extra_ms / (target - 1)
        needed_gflops = gflop / (needed_ms / 1e3) if needed_ms > 0 else float("inf")
        floor.update({
            f"ours_over_{name}": round(rec["wall_ms"] / ours_ms, 3),
            f"extra_ms_per_step_{name}": round(extra_ms, 2),
            f"target_over_{name}": target,
            f"needed_gradient_ms_for_target_over_{name}": round(needed_ms, 2),
            f"needed_gflops_for_target_over_{name}": round(needed_gflops, 1),
            f"needed_share_of_peak_for_target_over_{name}": round(needed_gflops / peak_rate, 3),
        })
    return {"implementations": impls, "floor": floor}


# ------------------------------------------------------------------ report


def _table(summary):
    rows = []
    for model_name, rec in summary["models"].items():
        fl = rec["floor"]
        rows.append(
            f"{model_name}: one input gradient {fl['gradient_gflop']} GFLOP; peak "
            f"{fl['peak_gflops']} GFLOPS (matmul {fl['matmul_gflops']}, conv {fl['conv_gflops']}); PGD-{summary['settings']['pgd_steps']} floor "
            f"{fl['pgd_floor_ms']} ms; ours at {fl['ours_gradient_gflops']} GFLOPS "
            f"({fl['ours_share_of_peak']:.0%} of peak). 'needs': the share of peak the shared "
            "model gradient would need for 'target'"
        )
        rows.append(
            f"  {'impl':18s}{'wall ms':>9s}{'model ops':>11s}{'other graph':>12s}"
            f"{'eager ops':>11s}{'outside':>9s}{'weight grad':>13s}{'ours x':>8s}{'+ms/step':>9s}"
            f"{'target':>8s}{'needs':>7s}"
        )
        for name, r in rec["implementations"].items():
            if r is None:
                rows.append(f"  {name:18s}  skipped: {benchlib.ART_NOTE}")
                continue
            ours_x = fl.get(f"ours_over_{name}")
            extra = fl.get(f"extra_ms_per_step_{name}")
            target = fl.get(f"target_over_{name}")
            needs = fl.get(f"needed_share_of_peak_for_target_over_{name}")
            rows.append(
                f"  {name:18s}{r['wall_ms']:9.1f}{r['graph_kernel_ms']['model']:11.1f}"
                f"{r['graph_kernel_ms']['other']:12.1f}{r['eager_kernel_ms']:11.1f}"
                f"{r['outside_kernels_ms']:9.1f}{r['weight_gradient_ms']:13.1f}"
                f"{'' if ours_x is None else f'{ours_x:8.2f}'}"
                f"{'' if extra is None else f'{extra:8.2f}'}"
                f"{'' if target is None else f'{target:7.1f}x'}"
                f"{'' if needs is None else f'{needs:7.0%}'}"
            )
    return "\n".join(rows)


def main(argv):
    del argv
    quick = FLAGS.quick
    cfg = {
        "batch_size": FLAGS.batch_size,
        "pgd_steps": FLAGS.pgd_steps if FLAGS.pgd_steps is not None else (3 if quick else 10),
        "repeats": FLAGS.repeats if FLAGS.repeats is not None else (2 if quick else 7),
        "warmup": FLAGS.warmup,
        "eps": FLAGS.eps,
        "seed": FLAGS.seed,
    }
    model_names = FLAGS.models or (["mnist_small"] if quick else ["mnist_small", "madry_mnist"])
    for key in ("batch_size", "pgd_steps", "repeats"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, received {key}={cfg[key]}")
    if cfg["warmup"] < 0:
        raise ConfigError(f"warmup must be >= 0, received warmup={cfg['warmup']}")
    if not 0 < cfg["eps"] <= 1:
        raise ConfigError(f"eps must be in (0, 1], received eps={cfg['eps']}")
    benchlib.check_mnist_models(model_names)
    _xplane_pb2()

    tf.config.set_visible_devices([], "GPU")
    tf.get_logger().setLevel("ERROR")
    art = benchlib.import_art()
    test_arrays = data.load_mnist_arrays("test")
    started = time.perf_counter()
    _log("peak rates")
    rate = peak_gflops()
    results = {}
    for name in model_names:
        results[name] = profile_model(name, test_arrays, cfg, art, rate)

    summary = {
        "benchmark": "profile_attacks",
        "command": " ".join(["python", "benchmarks/profile_attacks.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "git_commit": benchlib.git_commit(),
        "machine": {**benchlib.machine(), "device": "cpu"},
        "versions": benchlib.versions(art),
        "settings": {
            **cfg,
            "models": model_names,
            "attack": f"PGD-{cfg['pgd_steps']}, step 2.5*eps/k, one random start, true labels",
            "data": f"the first {cfg['batch_size']} MNIST test images (untrained models)",
        },
        "models": results,
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if art is None:
        summary["skipped"] = benchlib.ART_NOTE
    print(_table(summary))
    if FLAGS.output_json:
        atomic_write_json(FLAGS.output_json, summary)


if __name__ == "__main__":
    cli.run(main, "profile_attacks")
