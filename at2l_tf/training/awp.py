"""Adversarial weight perturbation (AWP; Wu, Xia, Wang, NeurIPS 2020), for any objective.

AWP trains against a worst case over the weights as well as over the inputs:

    min_w  max_{v ∈ V(w)}  L(w + v; x, x'),       ||v_l|| <= γ ||w_l|| for every layer l

with L the whole training loss (any objective of `training.objectives`, plus the
triplet term when on) and x' the adversarial examples crafted against the
*unperturbed* weights w. The inner maximum is taken with one normalized ascent
step per layer (the paper's Eq. 8–9, the authors' `utils_awp.py`):

    g_l = ∇_{w_l} L(w; x, x'),       v_l = γ · ||w_l|| · g_l / ||g_l||

then the update uses the gradient at the perturbed weights, applied to the
restored ones:

    w ← w − η · Opt( ∇_w L(w + v; x, x') )

Per step: craft x' at w; one forward/backward for g (the extra cost, ~one more
pass than the step without AWP); w ← w + v; the usual forward/backward at
w + v; w restored *exactly* (the saved values are written back, not w + v − v,
which float32 rounding would not undo); then the optimizer steps.

Layers: like the authors, only the multi-dimensional weights (convolution and
dense kernels) are perturbed; biases and normalization parameters are not.
γ = 5e-3 with TRADES and 1e-2 with AT are the authors' CIFAR-10 values; they
switch AWP on after a few epochs of training (`--awp_warmup_epochs`).

Where the authors' code and the paper differ, the paper is implemented: their
code takes g from one SGD step of a proxy copy of the model (learning rate
0.01), which is the same direction; and their AT code uses the adversarial CE
alone for g, where here g is the gradient of the objective being trained (with
`at` that is [CE(x) + λ1·CE(x')]/(1 + λ1)), so AWP composes with every
objective and the triplet term without a per-objective copy.

The perturbation lives in the compiled step (`AT2LModel.train_step`); whether
it is on is decided from the optimizer's iteration count (`start_step`), so a
resumed run switches it on at the same step as an uninterrupted one. With the
triplet term, the extra pass draws its own random negatives. Batch-norm
statistics see the extra pass too (the authors' proxy model keeps its own). Before
`start_step` the step runs the same graph with v = 0 (the extra pass is then
wasted: one compiled step for the whole run).

Mixed precision: weights are float32, so are g and v; under `mixed_float16` g
is taken from the scaled loss (only its direction matters) and a non-finite
g gives v = 0 for that step.
"""

import tensorflow as tf

from at2l_tf.training.weight_average import assign_in_replica_context

NORM_EPS = 1e-12


def perturbed_weights(weights):
    """The weights AWP perturbs: those of rank >= 2 (kernels), as the authors'."""
    return [w for w in weights if len(w.shape) >= 2]


def perturbation(weights, grads, gamma):
    """`v_l = γ ||w_l|| g_l / ||g_l||` per layer (0 where g_l is 0 or not finite).

    Args:
        weights: the variables (float32).
        grads: the loss gradient of each (the sum over replicas under a strategy).
        gamma: γ >= 0 (a float or a scalar tensor).
    """
    out = []
    for w, g in zip(weights, grads):
        w = tf.cast(w.value if hasattr(w, "value") else w, tf.float32)
        g = tf.zeros_like(w) if g is None else tf.cast(g, tf.float32)
        g_norm = tf.norm(g)
        v = gamma * tf.norm(w) * g / (g_norm + NORM_EPS)
        ok = tf.math.is_finite(g_norm) & (g_norm > 0)
        out.append(tf.where(ok, v, tf.zeros_like(v)))
    return out


def perturb(weights, deltas):
    """Adds `deltas` to `weights`; returns the saved values for `restore`."""
    saved = [tf.identity(w.value) for w in weights]
    assign_in_replica_context(weights, [s + d for s, d in zip(saved, deltas)])
    return saved


def restore(weights, saved):
    """Writes back the values `perturb` saved (bit for bit)."""
    assign_in_replica_context(weights, saved)
