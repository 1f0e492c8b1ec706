"""Distribution rules in one place: which strategy, which worker, who writes, which data.

* `make_strategy(name)`: `default`, `mirrored` (all local devices), `auto`
  (mirrored when more than one GPU is visible) or `multi_worker`
  (`tf.distribute.MultiWorkerMirroredStrategy` from the `TF_CONFIG` environment
  variable; without it, one worker). MultiWorkerMirroredStrategy must exist
  before any other TensorFlow op runs, so the pipeline creates the strategy first.
* `Worker`: this process's place in the cluster. Only the chief (task `chief`,
  or `worker` 0 when the cluster has no `chief`) writes `model.keras`,
  `results.json`, the export and TensorBoard summaries; the other workers write
  their summaries and epoch checkpoints to a temporary directory that is removed
  at the end (the callbacks must still run on every worker: reading distributed
  variables may be a collective op that every worker has to join).
* `shard_for_worker`: with several workers, each reads its own shard of the
  examples (`Dataset.shard` before anything is decoded), cut to the same length
  on every worker so that every worker runs the same number of steps.
* Keras 3's `fit` has two bugs with two or more workers, worked around in
  `AT2LModel` when `prepare_for_workers` sets `multi_worker_workarounds`:
  (a) it reduces each scalar a step returns with
  `strategy.reduce("MEAN", v, axis=0)`, which fails ("Invalid reduction
  dimension 0 for input with 0 dimensions", keras-team/keras#20585): the step
  returns its metrics as shape-`(1,)` tensors instead, which that reduction
  averages over replicas into the scalar Keras expected (the mean over
  replicas that Keras computes under MirroredStrategy; the epoch-end values
  are read from the metric variables, summed over all replicas, so they are
  exact global values); (b) before training it reduces one input batch over
  replicas only to learn its shapes (`_maybe_symbolic_build`), which fails on
  the `(x, y)` tuple: the model is built and its optimizer is built here, so
  that step is skipped. A custom training loop would avoid both, at the price
  of `fit`'s callbacks (TensorBoard, checkpoints, progress) that the rest of
  the package relies on.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from at2l_tf.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
_JOBS = ("chief", "worker")  # Jobs that train; parameter servers are not supported.


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place in the cluster.

    Attributes:
        task_type: `chief` or `worker` (`worker` when there is no cluster).
        index: task index within its job.
        num_workers: training processes in the cluster (1 without `TF_CONFIG`).
    """

    task_type: str = "worker"
    index: int = 0
    num_workers: int = 1
    has_chief_job: bool = False

    @property
    def is_chief(self):
        """The chief writes the run's outputs: task `chief`, else `worker` 0."""
        if self.has_chief_job:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0

    @property
    def name(self):
        return f"{self.task_type}-{self.index}"

    @property
    def shard_index(self):
        """0..num_workers-1, the chief first."""
        if self.task_type == "chief":
            return 0
        return self.index + (1 if self.has_chief_job else 0)


def parse_tf_config(raw):
    """Validates a `TF_CONFIG` value and returns this process's `Worker`.

    Args:
        raw: the JSON text of `TF_CONFIG`, e.g.
            `{"cluster": {"worker": ["localhost:12345", "localhost:12346"]},
              "task": {"type": "worker", "index": 0}}`.

    Raises:
        ConfigError: one line naming what is wrong.
    """
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
        raise ConfigError('TF_CONFIG needs a "cluster" object, e.g. {"cluster": {"worker": ["localhost:12345", ...]}, "task": {...}}')
    cluster = spec["cluster"]
    for job, addresses in cluster.items():
        if job not in _JOBS:
            raise ConfigError(f"TF_CONFIG job {job!r} is not supported; known jobs: {', '.join(_JOBS)}")
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"TF_CONFIG cluster.{job} must be a non-empty list of host:port addresses")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"TF_CONFIG address {address!r} of job {job!r} is not host:port")
    if "worker" not in cluster and "chief" not in cluster:
        raise ConfigError('TF_CONFIG cluster needs a "worker" list')
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError("TF_CONFIG cluster may have one chief only")
    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError('TF_CONFIG needs a "task" object with "type" and "index"')
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ConfigError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(
            f"TF_CONFIG task index {index!r} is out of range for job {task_type!r} "
            f"with {len(cluster[task_type])} task(s)"
        )
    return Worker(
        task_type=task_type,
        index=index,
        num_workers=sum(len(cluster[j]) for j in _JOBS if j in cluster),
        has_chief_job="chief" in cluster,
    )


def localhost_cluster(num_workers):
    """A `TF_CONFIG` cluster of `num_workers` workers on this machine, on free ports.

    For trying multi-worker training on one host (tests, benchmarks): each
    worker process gets `{"cluster": <this>, "task": {"type": "worker", "index": i}}`.
    The ports are free when chosen; another process may take one before the
    workers bind it.
    """
    import socket

    socks = [socket.socket() for _ in range(num_workers)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    return {"worker": [f"localhost:{p}" for p in ports]}


def worker_from_env(name, environ=None):
    """The `Worker` of strategy `name`: from `TF_CONFIG` for `multi_worker`, else a single one."""
    environ = os.environ if environ is None else environ
    if name == "multi_worker" and environ.get("TF_CONFIG"):
        return parse_tf_config(environ["TF_CONFIG"])
    return Worker()


def make_strategy(name):
    """The `tf.distribute.Strategy` called `name` (one of `STRATEGIES`).

    `multi_worker` must be called before any other TensorFlow op of the process
    (MultiWorkerMirroredStrategy configures the collective ops at start-up).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        worker_from_env(name)  # A malformed TF_CONFIG is a one-line error, not a TF traceback.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def prepare_for_workers(model, strategy, worker):
    """Builds `model`'s optimizer under `strategy` and switches on the Keras
    multi-worker workarounds of `AT2LModel` when there are two or more workers."""
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.classifier.trainable_weights)
    model.multi_worker_workarounds = (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and worker.num_workers > 1
    )
    return model


def weights_digest(model):
    """SHA-256 of `model`'s weights: equal on every worker of a synchronous run."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def check_batch_size(batch_size, num_replicas):
    """Every replica takes an equal share of the global batch."""
    if batch_size % num_replicas:
        raise ConfigError(
            f"batch_size must be a multiple of the number of replicas, received "
            f"batch_size={batch_size} with {num_replicas} replicas"
        )


def shard_for_worker(ds, worker):
    """This worker's shard of an unbatched dataset, equally long on every worker.

    Without a cluster `ds` is returned unchanged. Examples are dealt out
    round-robin (`Dataset.shard`) before any decoding, and every shard keeps
    `⌊n / num_workers⌋` of them, so that every worker runs the same number of
    steps (a worker with one batch more would wait for the others forever).
    """
    if worker.num_workers == 1:
        return ds
    n = int(ds.cardinality())
    if n < 0:  # Unknown (a filtered TFDS split): count once.
        n = int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
    return ds.shard(worker.num_workers, worker.shard_index).take(n // worker.num_workers)


def all_gather_bytes(strategy, worker, data):
    """Every worker's `data` on every worker, through `strategy`'s collectives.

    Each worker passes its own bytes; each gets back the list of all workers'
    bytes in `shard_index` order. Two all-reduce sums carry them (first the
    lengths, then the bytes, each worker's in its own row of a zero matrix), so
    no file is shared and the workers need no common filesystem. Every worker
    must call it (it is a collective). Used by `evaluate` to collect the
    per-example results of each worker's share; the values travel as float32,
    exact for bytes (0-255) added to zeros.

    Args:
        strategy: the `MultiWorkerMirroredStrategy` (or any strategy, for one worker).
        worker: this process's `Worker`.
        data: this worker's bytes.

    Returns:
        `[bytes of worker 0, bytes of worker 1, ...]`.
    """
    n, i = worker.num_workers, worker.shard_index
    if n == 1:
        return [bytes(data)]
    lengths = np.zeros([n], np.float32)
    lengths[i] = len(data)
    lengths = _all_sum(strategy, lengths).astype(np.int64)
    rows = np.zeros([n, int(lengths.max())], np.float32)
    rows[i, : len(data)] = np.frombuffer(data, np.uint8)
    rows = _all_sum(strategy, rows)
    return [rows[k, : lengths[k]].astype(np.uint8).tobytes() for k in range(n)]


def _all_sum(strategy, array):
    """The sum of `array` over the workers (an all-reduce; every worker calls it)."""
    # Lengths above 2**24 would not be exact in float32.
    if array.size and float(np.max(array)) >= 2**24:
        raise ValueError(f"all_gather_bytes carries at most {2**24 - 1} bytes per worker")
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(array), axis=None)
    return np.asarray(total)


def distribute_per_worker(strategy, ds):
    """A per-worker dataset as the distributed dataset `fit` takes as it is.

    `ds` is already this worker's shard (`shard_for_worker`), batched with one
    replica's share of the global batch (`batch_size // num_replicas_in_sync`),
    so TensorFlow must neither shard it again nor rebatch it.
    """

    def fn(context):
        del context  # The shard was taken before batching.
        return ds

    return strategy.distribute_datasets_from_function(fn)


__all__ = [
    "STRATEGIES",
    "Worker",
    "all_gather_bytes",
    "check_batch_size",
    "distribute_per_worker",
    "make_strategy",
    "prepare_for_workers",
    "parse_tf_config",
    "shard_for_worker",
    "weights_digest",
    "worker_from_env",
]
