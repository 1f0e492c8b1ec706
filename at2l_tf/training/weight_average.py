"""Weight averaging: an exponential moving average (EMA) of the trainable weights.

After every optimizer update `t = 1, 2, ...` (the adversarial phase's optimizer
steps, counted by `optimizer.iterations`), with the decay `d` (`--ema=d`):

    θ̄_1 = θ_1,        θ̄_t = d · θ̄_{t−1} + (1 − d) · θ_t                    (t > 1)

so θ̄ averages the last ~1/(1 − d) steps (d = 0.995: ~200 steps). Gowal et al.
(2020, "Uncovering the limits of adversarial training against norm-bounded
adversarial examples", arXiv:2010.03593) use d = 0.995 *per step* and credit
the average with a large part of their gains. Only trainable weights are
averaged; non-trainable state (batch-norm moving statistics) is the raw model's,
as with Keras' own `use_ema`. The model keeps training from the raw weights θ_t;
the average is what the run *returns*: `model.keras`, the final robustness check
and the SavedModel export use θ̄ (`finalize`), and validation during training is
measured on θ̄ (`SwapForValidation`), so `val_*` metrics describe the model that
will be shipped.

**Why not Keras' `use_ema=True`.** Keras 3 optimizers keep the same average in
their slots, but `Model.fit` ends every call with
`optimizer.finalize_variable_values`, which *overwrites the raw weights with the
average*. `experiment.fit` calls `fit` once per epoch (and once for a resumed
part of an epoch), so training would restart from the average at every epoch
end: another algorithm than the EMA of one trajectory, and one where a resumed
run's trajectory would depend on where it was interrupted. Here the average
lives in the wrapper (`AT2LModel.weight_average`), is updated in the compiled
step after `optimizer.apply`, and is written to and read from the run's backup
(`training.backup`) beside the optimizer state.

Distribution: the variables are mirrored; the update is the same on every
replica (it reads the synchronized weights) and is written through
`merge_call` / `extended.update`, as Keras' optimizer writes its slots.
Mixed precision: weights are float32 under `mixed_bfloat16` / `mixed_float16`,
and so is the average.
"""

import keras
import numpy as np
import tensorflow as tf


def assign_in_replica_context(variables, values):
    """`v.assign(x)` for each pair, from the replica context of a compiled step.

    Model weights are mirrored variables without an aggregation under a
    `tf.distribute` strategy, which refuses a plain `assign` inside the
    replica function; the values here are equal on every replica, so each
    replica's copy is written with its own (equal) value, as Keras' optimizer
    updates its variables.
    """
    variables = [getattr(v, "value", v) for v in variables]
    values = list(values)

    def merge(strategy, values):
        for var, value in zip(variables, values):
            strategy.extended.update(var, lambda v, x: v.assign(x), args=(value,), group=False)

    tf.distribute.get_replica_context().merge_call(merge, args=(values,))


class WeightAverage:
    """The EMA θ̄ of `weights` with decay `decay` (see the module docstring).

    Args:
        weights: the trainable variables to average (the classifier's).
        decay: d in (0, 1).
        owner: the `keras.Layer` that creates (and tracks) the average's variables.
    """

    def __init__(self, weights, decay, owner):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), received ema={decay}")
        self.decay = float(decay)
        self.weights = list(weights)
        self.averages = [
            owner.add_weight(
                shape=tuple(w.shape),
                initializer="zeros",
                dtype="float32",
                trainable=False,
                name=f"ema_{i}",
            )
            for i, w in enumerate(self.weights)
        ]
        for avg, w in zip(self.averages, self.weights):
            avg.assign(tf.cast(w.value, tf.float32))

    def update(self, iterations):
        """θ̄ ← d·θ̄ + (1 − d)·θ, or θ̄ ← θ after the first update (`iterations` == 1).

        Call after `optimizer.apply`, with the optimizer's iteration count.
        """
        first = tf.cast(tf.equal(iterations, 1), tf.float32)
        d = self.decay * (1.0 - first)
        new = [d * tf.cast(a.value, tf.float32) + (1.0 - d) * tf.cast(w.value, tf.float32)
               for a, w in zip(self.averages, self.weights)]
        assign_in_replica_context(self.averages, new)

    def get_values(self):
        """The averages as NumPy arrays (for the backup)."""
        return [keras.ops.convert_to_numpy(a.value) for a in self.averages]

    def set_values(self, arrays):
        """Loads averages saved by `get_values` (a resume)."""
        if [tuple(a.shape) for a in self.averages] != [tuple(np.shape(x)) for x in arrays]:
            raise ValueError("the saved weight averages do not match the model's weights")
        for a, x in zip(self.averages, arrays):
            a.assign(x)

    def swap(self):
        """Exchanges θ and θ̄ exactly (called outside the compiled step)."""
        for a, w in zip(self.averages, self.weights):
            raw = keras.ops.convert_to_numpy(w.value)
            w.assign(keras.ops.convert_to_numpy(a.value))
            a.assign(raw)

    def finalize(self):
        """θ ← θ̄: the weights the run returns (after training; the raw ones are lost)."""
        for a, w in zip(self.averages, self.weights):
            w.assign(keras.ops.convert_to_numpy(a.value))


class SwapForValidation(keras.callbacks.Callback):
    """Measures validation on the averaged weights: swaps θ̄ in for `evaluate`
    inside `fit` (`on_test_begin`) and swaps the raw weights back (`on_test_end`)."""

    def __init__(self, weight_average):
        super().__init__()
        self.weight_average = weight_average
        self._swapped = False

    def on_test_begin(self, logs=None):
        if not self._swapped:
            self.weight_average.swap()
            self._swapped = True

    def on_test_end(self, logs=None):
        if self._swapped:
            self.weight_average.swap()
            self._swapped = False
