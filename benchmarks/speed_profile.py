"""Where the time of PGD goes, the `profile` family of `speed.py`: an op profile of ours, eager
CleverHans and ART, and a FLOP floor no implementation can beat here (what it times:
benchmarks/README.md, "What each family times")."""

import collections
import glob
import os
import re
import tempfile
import time

import benchlib
import keras
import speed_attacks
import tensorflow as tf

from at2l_tf import attacks, models
from at2l_tf.errors import ConfigError

NAME = "profile"
FIGURES = ()
SETTINGS = {"models": benchlib.MNIST_MODELS, "batch_size": None, "pgd_steps": (10, 3), "repeats": (7, 2),
            "warmup": (2, 2), "eps": (0.3, 0.3), "seed": None}
WEIGHT_GRADIENT_OPS = ("Conv2DBackpropFilter", "BiasAddGrad")
TARGET_SPEEDUPS = {"cleverhans_eager": speed_attacks.TARGETS["pgd_vs_cleverhans_eager"][1],
                   "art": speed_attacks.TARGETS["pgd_vs_art"][1]}
FLOOR_KEYS = ("ours_over", "extra_ms_per_step", "target_over", "needed_gradient_ms_for_target_over",
              "needed_gflops_for_target_over", "needed_share_of_peak_for_target_over")
_EAGER_PREFIX = "EagerLocalExecute: "
# A graph op's event: `scope/op_name:OpType` (no `::`, which marks the executor's own events).
_OP_EVENT = re.compile(r"^([^:]+):([A-Za-z_][A-Za-z0-9_]*)$")


def configure(cfg):
    _xplane_pb2()


def _xplane_pb2():
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as e:  # Moved in some TensorFlow release.
        raise ConfigError(f"this TensorFlow ({tf.__version__}) has no tensorflow.tsl.profiler.protobuf.xplane_pb2, "
                          "which the profile reads") from e
    return xplane_pb2


def _self_times(events, names):
    """`(name, self ms, total ms)` per event of one line; self less the events nested in it.

    Events on a line nest: the executor's `ExecutorState::Process` holds the ops it runs, and a
    call op (`StatefulPartitionedCall`, `While`) the ops of the function it calls when that runs
    on the same thread, so self time counts each span of the line once. An eager op's event
    holds the runtime's own events (`EagerKernelExecute`), part of it: eager ops count total time.
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
    return [(names.get(e.metadata_id, ""), max(t, 0) / 1e9, e.duration_ps / 1e9) for e, t in zip(events, own)]


def trace(fn, model_name):
    """Runs `fn()` once under TensorFlow's profiler; kernel time by kind and op type, in ms.

    Graph ops are the events on the executor threads (`tf_Compute*`), by self time; eager ops
    are `EagerLocalExecute: OpType` on the calling thread. A `tf.function` called eagerly
    shows as an eager event named after it (`__inference_...`), whose ops are already counted
    as graph ops, so those are skipped. oneDNN's kernels go under TensorFlow's op names
    (`_MklNativeFusedConv2D` -> `FusedConv2D`), an op under its name without the scopes of
    the calls that ran it.
    """
    xplane_pb2 = _xplane_pb2()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        try:
            fn()
        finally:
            traced_ms = (time.perf_counter() - start) * 1e3
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no .xplane.pb under {logdir}")
        space = xplane_pb2.XSpace()
        with open(max(paths, key=os.path.getmtime), "rb") as f:
            space.ParseFromString(f.read())

    def op_type(name):
        return re.sub(r"^_Mkl(Native)?", "", name)

    graph, eager = collections.Counter(), 0.0  # graph: "model" / "other" -> ms
    by_type, by_name = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            executor = line.name.startswith("tf_Compute")
            for name, ms, total_ms in _self_times(line.events, names):
                op = _OP_EVENT.match(name)
                if executor and op:
                    graph["model" if model_name in op.group(1) else "other"] += ms
                    by_type[op_type(op.group(2))] += ms
                    by_name["/".join(p for p in op.group(1).split("/")
                                     if not re.fullmatch(r"(Stateful)?PartitionedCall(_\d+)?", p))] += ms
                elif not executor and name.startswith(_EAGER_PREFIX) and not name[len(_EAGER_PREFIX):].startswith("__"):
                    eager += total_ms
                    by_type[op_type(name[len(_EAGER_PREFIX):])] += total_ms
    return {
        "traced_wall_ms": round(traced_ms, 1),
        "graph_kernel_ms": {k: round(graph[k], 1) for k in ("model", "other")},
        "eager_kernel_ms": round(eager, 1),
        "outside_kernels_ms": round(traced_ms - sum(graph.values()) - eager, 1),
        "weight_gradient_ms": round(sum(by_type[t] for t in WEIGHT_GRADIENT_OPS), 1),
        "by_op_type": {t: round(v, 1) for t, v in by_type.most_common(12)},
        "top_graph_ops": {n: round(v, 1) for n, v in by_name.most_common(8)},
    }


def peak_gflops(repeats=5):
    """The best float32 rates TensorFlow reaches here, GFLOPS, of a 4096² matmul and of a 5x5
    convolution, 32 -> 64 channels at 14x14, batch 128 (the Madry CNN's second layer, the fastest
    kernel seen in these profiles), each the best of `repeats` calls: an upper bound on what a
    model's kernels sustain."""
    n, seeds = 4096, iter(((1, 2), (3, 4), (5, 6), (7, 8)))
    a, b, x, w = (tf.random.stateless_normal(shape, seed=next(seeds))
                  for shape in ((n, n), (n, n), (128, 14, 14, 32), (5, 5, 32, 64)))
    matmul, conv = tf.function(tf.linalg.matmul), tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
    wall, _, _ = benchlib.interleaved({"matmul": lambda: matmul(a, b).numpy(), "conv": lambda: conv(x, w).numpy()},
                                      repeats=repeats, warmup=2)
    flop = {"matmul": 2 * n**3, "conv": 2 * 128 * 14 * 14 * 64 * 25 * 32}
    return {k: flop[k] / min(wall[k]) / 1e9 for k in flop}


def measure(cfg):
    art = speed_attacks.import_peer("art")
    benchlib.log("peak rates")
    rate = peak_gflops()
    out = {"models": {name: profile_model(name, cfg, art, rate) for name in cfg["models"]}}
    if art is None:
        out["skipped"] = speed_attacks.NOTES["art"]
    return out


def profile_model(model_name, cfg, art, peak):
    keras.utils.set_random_seed(cfg["seed"])
    clf = models.get_model(model_name)
    ((x, y),) = benchlib.mnist_batches("test", 1, cfg["batch_size"])
    k, eps = cfg["pgd_steps"], cfg["eps"]
    step = 2.5 * eps / k
    pgd = attacks.make_attack("pgd", eps=eps, steps=k, step_size=step)
    ours = tf.function(lambda xb, yb: pgd(lambda z: clf(z, training=False), xb, yb), reduce_retracing=True)
    fns = {"ours": lambda: ours(x, y).numpy(),
           "cleverhans_eager": lambda: speed_attacks.cleverhans_eager_pgd(clf, x, y, eps, step, k)}
    if art is not None:
        art_pgd = speed_attacks.art_attacks(art, clf, eps, step, k, len(x))[1]
        fns["art"] = lambda: art_pgd.generate(x, y)
    wall, _, _ = benchlib.interleaved(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    impls = {}
    for name, fn in fns.items():
        benchlib.log(f"{model_name}: tracing {name}")
        impls[name] = {"wall_ms": round(benchlib.medians(wall)[name] * 1e3, 1), **trace(fn, clf.name)}
    impls.setdefault("art", None)

    gflop = 2 * benchlib.forward_flops(clf) * len(x) / 1e9
    peak_rate = max(peak.values())
    floor_ms, ours_ms = k * gflop / peak_rate * 1e3, impls["ours"]["wall_ms"]
    floor = {
        "gradient_gflop": round(gflop, 3), "matmul_gflops": round(peak["matmul"], 1),
        "conv_gflops": round(peak["conv"], 1), "peak_gflops": round(peak_rate, 1), "pgd_floor_ms": round(floor_ms, 1),
        "ours_gradient_gflops": round(k * gflop / (ours_ms / 1e3), 1),
        "ours_share_of_peak": round(floor_ms / ours_ms, 3),
        # Of the traced call, whose times the profiler's own overhead inflates.
        "ours_outside_model_share": round(
            1 - impls["ours"]["graph_kernel_ms"]["model"] / impls["ours"]["traced_wall_ms"], 3),
    }
    for name, target in TARGET_SPEEDUPS.items():
        rec = impls[name]
        if rec is None:
            floor.update({f"{key}_{name}": None for key in FLOOR_KEYS})
            continue
        extra_ms = (rec["wall_ms"] - ours_ms) / k
        needed_ms = extra_ms / (target - 1)  # ours / it = (g + extra) / g <= target for g <= this.
        needed_gflops = gflop / (needed_ms / 1e3) if needed_ms > 0 else float("inf")
        floor.update({
            f"ours_over_{name}": round(rec["wall_ms"] / ours_ms, 3), f"extra_ms_per_step_{name}": round(extra_ms, 2),
            f"target_over_{name}": target, f"needed_gradient_ms_for_target_over_{name}": round(needed_ms, 2),
            f"needed_gflops_for_target_over_{name}": round(needed_gflops, 1),
            f"needed_share_of_peak_for_target_over_{name}": round(needed_gflops / peak_rate, 3),
        })
    return {"implementations": impls, "floor": floor}


def report(record):
    return benchlib.table(record, f"{NAME}: PGD-{record['settings']['pgd_steps']}", record["models"],
                          hide=("by_op_type", "top_graph_ops"))
