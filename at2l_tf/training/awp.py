"""Adversarial weight perturbation (AWP; Wu, Xia, Wang, NeurIPS 2020), for any objective.

AWP trains against a worst case over the weights as well as over the inputs:

    min_w  max_{v ∈ V(w)}  L(w + v; x, x'),       ||v_l|| <= γ ||w_l|| for every layer l

with L the whole training loss (any objective of `training.objectives`, plus the
triplet term when on) and x' the adversarial examples crafted against the
*unperturbed* weights w. The inner maximum is approximated by one ascent step,
normalized per layer to the layer's weight norm (the authors' `utils_awp.py`):

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


def perturbation(weight, grad, gamma):
    """`v_l = γ ||w_l|| g_l / ||g_l||` of one layer (0 where g_l is 0 or not finite).

    Args:
        weight: the layer's weight tensor (float32).
        grad: its loss gradient (summed over replicas under a strategy).
        gamma: γ >= 0 (a float or a scalar tensor).
    """
    w = tf.cast(weight, tf.float32)
    g = tf.cast(grad, tf.float32)
    g_norm = tf.norm(g)
    v = gamma * tf.norm(w) * g / (g_norm + NORM_EPS)
    ok = tf.math.is_finite(g_norm) & (g_norm > 0)
    return tf.where(ok, v, tf.zeros_like(v))


def perturb(weights, grads, gamma):
    """w_l ← w_l + v_l for each of `weights`, from the replica context of a step.

    `grads` are this replica's gradients (its share of the global loss): they
    are summed over replicas, then every replica's copy of w_l moves by the same
    v_l. The sum and the update run in the cross-replica context (`merge_call`),
    as Keras' optimizer updates its variables.

    Returns:
        The saved values of `weights`, for `restore`.
    """
    saved = [tf.identity(w.value) for w in weights]
    variables = [w.value for w in weights]
    grads = [tf.zeros_like(s) if g is None else tf.convert_to_tensor(g) for s, g in zip(saved, grads)]
    gamma = tf.convert_to_tensor(gamma, tf.float32)

    def merge(strategy, grads, gamma):
        reduced = strategy.extended.batch_reduce_to(
            tf.distribute.ReduceOp.SUM, list(zip(grads, variables))
        )
        for var, g in zip(variables, reduced):
            strategy.extended.update(
                var, lambda v, g, c: v.assign_add(perturbation(v, g, c)), args=(g, gamma), group=False
            )

    tf.distribute.get_replica_context().merge_call(merge, args=(grads, gamma))
    return saved


def restore(weights, saved):
    """Writes back the values `perturb` saved (bit for bit)."""
    assign_in_replica_context(weights, saved)
