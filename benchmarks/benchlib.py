"""What the speed families of `speed.py` share: the one timing loop (`interleaved`), sections,
the data, the FLOP count of a network, a compiled training step, targets and the report table.
(`speed.py` runs as `python benchmarks/speed.py`: this directory is first on `sys.path`.)
"""

import contextlib
import os
import statistics
import time

from at2l_tf.log import log as _log

MNIST_MODELS = (["mnist_small", "madry_mnist"], ["mnist_small"])  # A `SETTINGS` default: full, --quick.


def log(msg):
    _log(msg, prefix="speed")


def interleaved(fns, *, repeats, warmup, calls=1):
    """Times the callables `fns` (`{name: fn}`, each blocking until its work is done) round-robin:
    `warmup` untimed calls of each, then `repeats` rounds of `calls` calls each, the order
    rotated every round. Returns `({name: [wall s per call, a round each]}, {name: [CPU s per
    call, all threads of this process]}, {name: last output})`."""
    names, last = list(fns), {}
    for name in names:
        for _ in range(warmup):
            last[name] = fns[name]()
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                last[name] = fns[name]()
            wall[name].append((time.perf_counter() - start) / calls)
            cpu[name].append((time.process_time() - start_cpu) / calls)
    return wall, cpu, last


def medians(times):
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def section(name, into, key):
    """Logs part `name` of a run, then puts its wall time, the cores this process got on
    average (~cpu_count when it had the machine) and the load average in `into[key]`."""
    wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    log(f"{name} ...")
    yield
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    into[key] = {"wall_s": round(wall, 2), "cpu_cores_used": round(cpu / wall, 2) if wall > 0 else None,
                 "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    log(f"{name}: {wall:.1f} s, {into[key]['cpu_cores_used']} cores")


_MNIST = {}


def mnist_batches(split, n, batch_size):
    """The first `n` batches of the shipped MNIST's `split` as float32 NumPy `(x, y)`, x in [0, 1]."""
    if split not in _MNIST:
        from at2l_tf import data

        _MNIST[split] = data.load_mnist_arrays(split)
    images, labels = _MNIST[split]
    return [(images[i * batch_size:(i + 1) * batch_size].astype("float32") / 255.0,
             labels[i * batch_size:(i + 1) * batch_size].astype("int64")) for i in range(n)]


def forward_flops(net, strict=True):
    """FLOPs of one image's forward pass: 2 per multiply-add of the Conv2D and Dense layers
    (nested networks, such as one behind a defence layer, included).

    Raises:
        ConfigError: with `strict`, another layer with weights (its FLOPs would go uncounted;
            without, they are: batch normalization's, say).
    """
    import keras

    from at2l_tf.errors import ConfigError

    flop = 0
    for layer in net.layers:
        if isinstance(layer, keras.Model):
            flop += forward_flops(layer, strict)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape  # c_in is per group already.
            flop += 2 * layer.output.shape[1] * layer.output.shape[2] * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            flop += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif strict and layer.weights and not isinstance(layer, keras.layers.InputLayer):
            raise ConfigError(f"cannot count the FLOPs of layer {layer.name!r} ({type(layer).__name__}); "
                              "the count knows Conv2D and Dense layers")
    return int(flop)


def step_clock():
    """A Keras callback noting when `fit` starts (`begin`) and when each step ends (`ends`)."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin, self.ends = time.perf_counter(), []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepClock()


def train_step(model, x, y):
    """`model`'s compiled training step (Keras' `train_function`) on the fixed batch `(x, y)`,
    as a callable; reading the loss waits for the step. `model` must be compiled."""
    import tensorflow as tf

    model.optimizer.build(model.classifier.trainable_weights)
    model.make_train_function()
    # Same element spec as the training pipeline, so a later `fit` reuses the trace.
    it, fn = iter(tf.data.Dataset.from_tensors((x, y)).repeat()), model.train_function
    return lambda: float(fn(it)["loss"])


def targets(results, targets_, figures, notes=None):
    """Each measured target: its value per model, and `pass` when every model meets it.

    `targets_` maps a figure to `(op, threshold)`; a figure whose value is None on some
    model (its peer library missing) has `pass` None and `skipped`, its `notes` entry.
    """
    out = {}
    for name, (op, threshold) in targets_.items():
        if name not in figures:
            continue
        values = {m: r[name] for m, r in results.items()}
        entry = out[name] = {"target": f"{op} {threshold:g}", "values": values}
        if any(v is None for v in values.values()):
            entry.update({"pass": None, "skipped": (notes or {}).get(name)})
        else:
            entry["pass"] = all(meets(v, op, threshold) for v in values.values())
    return out


def meets(value, op, threshold):
    return value <= threshold if op == "<=" else value >= threshold


def table(record, title, columns, show=("",), hide=(), targets_=None):
    """Text lines of a family's record: a row per number in the records of `columns`
    (`{name: record}`, a column each), by dotted path, for the paths that start with one of
    `show` and hold none of `hide`; a figure of `targets_` shows its target, and ok or MISS."""
    def leaves(r, path=""):
        for key, v in r.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{path}{key}.")
            elif v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
                yield f"{path}{key}", v

    rows, columns = {}, dict(sorted(columns.items()))  # Sorted, as in a JSON file.
    for name, r in columns.items():
        for path, v in leaves(r):
            if path.startswith(show) and not any(h in path for h in hide):
                rows.setdefault(path, {})[name] = v
    rows = dict(sorted(rows.items()))
    m, load, targets_ = record["machine"], record.get("load"), targets_ or {}
    label, width = max([6, *map(len, rows)]) + 2, max([12, *(len(n) + 2 for n in columns)])
    lines = [f"{title}; {m['cpu_model']}, {m['cpu_count']} CPUs" + (" (--quick)" if record.get("quick") else "")
             + (f"; load avg {load['load_avg_start'][0]} -> {load['load_avg_end'][0]}" if load else ""),
             f"{'figure':<{label}}{'target':>8}" + "".join(f"{n:>{width}}" for n in columns)]
    for path, values in rows.items():
        op, thr = targets_.get(path, ("", None))
        cells = []
        for v in (values.get(name) for name in columns):
            cell = "n/a" if v is None else f"{v:,.0f}" if isinstance(v, int) or abs(v) >= 1000 else f"{v:.4g}"
            cells.append(cell + ("" if thr is None or v is None else " ok" if meets(v, op, thr) else " MISS"))
        goal = "" if thr is None else f"{op}{thr:g}"
        lines.append(f"{path:<{label}}{goal:>8}" + "".join(f"{c:>{width}}" for c in cells))
    return lines + ([f"skipped: {record['skipped']}"] if record.get("skipped") else [])


def model_report(record, family):
    """The `table` of a family measured per model (its rows `family.SHOW`), or no lines when the
    record holds none of its figures."""
    if not set(family.FIGURES) & set(record["settings"].get("figures", family.FIGURES)):
        return []
    return table(record, family.NAME, record["models"], family.SHOW, targets_=family.TARGETS)
