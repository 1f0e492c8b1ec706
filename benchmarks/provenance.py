"""How a results JSON was made, written by one function: `provenance(script, started)` gives the
command line, the seconds, the machine (CPU name, family/model, SIMD flags), the git commit
(always under `git_commit`) and the date; `write` adds it to a record and writes the JSON.

The benchmarks run as `python benchmarks/<name>.py`, so this directory is first on
`sys.path` and `import provenance` finds this module.
"""

import importlib.metadata
import os
import platform
import resource
import sys
import time

_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo():
    """The first processor's fields in /proc/cpuinfo (Linux), or {}."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine():
    """Platform, Python, CPU count, CPU model and vector extensions, oneDNN setting ("AMD EPYC"
    names several generations whose TensorFlow speeds differ by 2x or more: the family, model
    and SIMD flags tell which CPU a result came from)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_family_model": f"{info['cpu family']}/{info['model']}" if {"cpu family", "model"} <= set(info) else None,
        "cpu_simd": [f for f in _SIMD_FLAGS if f in flags] if flags else None,
        # at2l_tf sets "1" unless the caller set it (oneDNN kernels); "0" gives TensorFlow's Eigen kernels.
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def version(dist):
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(art, foolbox=None):
    """Versions of what the benchmarks run: TensorFlow, Keras, CleverHans, ART and Foolbox
    (None when not used), ..."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cleverhans": version("cleverhans"),
        "adversarial-robustness-toolbox": version("adversarial-robustness-toolbox") if art else None,
        "foolbox": version("foolbox") if foolbox else None,
        "eagerpy": version("eagerpy") if foolbox else None,
        "numpy": version("numpy"),
        "at2l_tf": version("at2l_tf"),
    }


def git_commit():
    """The checked-out commit the benchmark runs from, `+dirty` if tracked Python
    files differ from it; None outside a git checkout (`evaluation.record.git_commit`,
    which robustness records use too)."""
    from at2l_tf.evaluation.record import git_commit as commit_of

    return commit_of(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb():
    """Peak resident memory of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS.
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def provenance(script, started):
    """How a results file was made: the command line of `benchmarks/<script>`,
    the seconds since `started`, the machine, the git commit and the date."""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write(path, record, script, started):
    """Writes `record` with its provenance to the JSON `path` (atomically; nothing without a path)."""
    from at2l_tf.fileio import atomic_write_json
    from at2l_tf.log import log

    if path:
        atomic_write_json(path, {**record, **provenance(script, started)})
        log(f"wrote {path}", prefix=os.path.splitext(script)[0])
