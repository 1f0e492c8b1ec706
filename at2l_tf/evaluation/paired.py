"""Paired comparison of two training objectives over seeds and test examples.

Robust accuracy varies with the seed (initial weights, data order) far more
than its sampling error on 1,000 images suggests (benchmarks/README.md: one
recipe moved several points between seeds). Two objectives are therefore compared *paired*:
trained with the same seeds, judged on the same examples, and the difference

    d = mean over seeds s and examples i of (r_B(s, i) − r_A(s, i))

(r = 1 if example i is classified correctly under the attack, 0 if not) gets
a 95% interval from a two-level bootstrap: resample the seeds with
replacement, then the examples with replacement (the same examples for A and
B, which keeps the pairing), and take the 2.5% and 97.5% quantiles of d over
the replicates. The seeds level carries the training noise, the examples level
the test-set noise; with 3 seeds the interval is wide, as it should be.

The correctness vectors are stored compactly as strings of "0"/"1" (one
character per example) in the study JSONs: `encode` / `decode`.
"""

import numpy as np


def encode(correct):
    """A bool/0-1 vector as a "0"/"1" string."""
    return "".join("1" if c else "0" for c in np.asarray(correct).astype(bool))


def decode(text):
    """The bool vector of an `encode`d string."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord("1")


def paired_bootstrap(a, b, *, replicates=2000, level=0.95, seed=0):
    """The paired difference mean(b − a) and its bootstrap interval over seeds and examples.

    Args:
        a, b: `{seed: bool vector (n,)}`, per-example correctness of the
            reference objective A and of B on the same n examples; only the
            seeds both have are used.
        replicates: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        `{"difference", "low", "high", "seeds", "num_examples", "per_seed",
        "replicates", "level"}` with differences as fractions (b − a), and
        `per_seed` the difference of each seed.

    Raises:
        ValueError: no common seed, vectors of different lengths, or a bad level.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), received level={level}")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: A has {sorted(a)}, B has {sorted(b)}")
    diff = []
    for s in seeds:
        va, vb = np.asarray(a[s], bool), np.asarray(b[s], bool)
        if va.shape != vb.shape or va.ndim != 1:
            raise ValueError(f"seed {s}: correctness vectors of shapes {va.shape} and {vb.shape}")
        diff.append(vb.astype(np.float64) - va.astype(np.float64))
    if len({d.shape for d in diff}) != 1:
        raise ValueError("the seeds were judged on different numbers of examples")
    diff = np.stack(diff)  # (seeds, examples)
    n_seeds, n = diff.shape
    rng = np.random.default_rng(seed)
    estimates = np.empty(replicates)
    for r in range(replicates):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n, n)
        estimates[r] = diff[np.ix_(rows, cols)].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    point = float(diff.mean())
    return {
        "difference": point,
        "low": float(min(low, point)),
        "high": float(max(high, point)),
        "seeds": seeds,
        "num_examples": int(n),
        "per_seed": [float(d.mean()) for d in diff],
        "replicates": int(replicates),
        "level": level,
    }


__all__ = ["decode", "encode", "paired_bootstrap"]
