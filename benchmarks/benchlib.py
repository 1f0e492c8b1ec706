"""Provenance helpers shared by the benchmark scripts (machine, versions, commit, ART).

The scripts run as `python benchmarks/<name>.py`, so this directory is first
on `sys.path` and `import benchlib` finds this module.
"""

import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import warnings

# The speed targets of issue 5, as speed.py checks them: name -> (comparison, threshold).
TARGETS = {
    "at2l_over_at": ("<=", 1.05),
    "pgd_efficiency": ("<=", 1.15),
    "pgd_vs_art": (">=", 3.0),
    "fgsm_vs_art": (">=", 2.0),
    "pgd_vs_cleverhans_eager": (">=", 2.0),
}

ART_NOTE = "adversarial-robustness-toolbox not installed (pip install -e '.[bench]')"


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
    """Platform, Python, CPU count, CPU model and vector extensions, oneDNN setting.

    "AMD EPYC" names several generations, whose speeds differ by 2x or more
    for TensorFlow (AVX-512 or not): the family, model and SIMD flags tell
    which CPU a result came from.
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_family_model": (
            f"{info['cpu family']}/{info['model']}" if "cpu family" in info and "model" in info
            else None
        ),
        "cpu_simd": [f for f in _SIMD_FLAGS if f in flags] if flags else None,
        # at2l_tf sets "1" unless the caller set it: oneDNN kernels everywhere.
        # "0" gives TensorFlow's Eigen kernels.
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def version(dist):
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit():
    """The checked-out commit the benchmark runs from, `+dirty` if code differs from it.

    Only changes to tracked Python files count (a results file or the README
    being edited does not change what ran). None outside a git checkout.
    """
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py")
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + ("+dirty" if changed else "")


def import_art():
    """ART's `(TensorFlowV2Classifier, FastGradientMethod, ProjectedGradientDescent)`, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "PyTorch not found" and the like.
            from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
            from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        return None
    return TensorFlowV2Classifier, FastGradientMethod, ProjectedGradientDescent


def check_mnist_models(names):
    """Raises a one-line ConfigError unless every name is a registered MNIST model."""
    from at2l_tf import models
    from at2l_tf.errors import ConfigError

    mnist = [m for m in models.available_models() if models.get_entry(m).dataset == "mnist"]
    for name in names:
        entry = models.get_entry(name)  # Unknown: ConfigError listing the known models.
        if entry.dataset != "mnist":
            raise ConfigError(
                f"model {name!r} is a {entry.dataset} model; the benchmarks run on MNIST: "
                f"{', '.join(mnist)}"
            )


def peak_rss_mb():
    """Peak resident memory of this process, in MiB."""
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def batches(images, labels, n, batch_size):
    """The first `n` batches of uint8 images as float32 NumPy `(x, y)`, x in [0, 1]."""
    out = []
    for i in range(n):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        out.append(((images[sl].astype("float32") / 255.0), labels[sl].astype("int64")))
    return out
