"""`TripletRegularizer`: the λ2 term of Eq. 2 as a Keras layer that calls `add_loss`."""

import keras
import tensorflow as tf

from at2l_tf import losses


@keras.saving.register_keras_serializable(package="at2l_tf")
class TripletRegularizer(keras.layers.Layer):
    """Adds `λ2 / k · Σ_i h_i` (paper Eq. 2) to the owning model's losses.

    `h_i` is the triplet hinge with in-batch negatives (`losses.triplet_term`).
    `k` is the *global* batch size, so that under `MirroredStrategy` the
    per-replica terms sum to the loss of the whole batch.

    Args:
        lambda2: weight λ2 of the triplet term (>= 0).
        margin: margin α (>= 0).
        num_classes: number of classes (decides the negative selection rule).
        norm: logit distance, `"linf"` (default, the paper's), `"l2"` or `"l1"`.
        seed: seed of the random choice among candidate negatives.

    Call arguments:
        labels: int labels `(k_replica,)`.
        clean_logits: `(k_replica, C)` logits of the clean batch.
        adv_logits: `(k_replica, C)` logits of its adversarial examples.
        global_batch_size: scalar float, examples in the global batch.

    Returns:
        The per-example hinge `(k_replica,)` (for metrics).
    """

    def __init__(self, lambda2, margin, num_classes, norm="linf", seed=None, **kwargs):
        super().__init__(**kwargs)
        if lambda2 < 0:
            raise ValueError(f"lambda2 must be >= 0, received lambda2={lambda2}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, received margin={margin}")
        if norm not in losses.NORMS:
            raise ValueError(f"norm must be one of {losses.NORMS}, received norm={norm!r}")
        self.lambda2 = float(lambda2)
        self.margin = float(margin)
        self.num_classes = int(num_classes)
        self.norm = norm
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, labels, clean_logits, adv_logits, global_batch_size):
        hinge = losses.triplet_term(
            labels,
            clean_logits,
            adv_logits,
            margin=self.margin,
            num_classes=self.num_classes,
            norm=self.norm,
            seed=self.seed_generator,
        )
        self.add_loss(self.lambda2 * tf.reduce_sum(hinge) / global_batch_size)
        return hinge

    def get_config(self):
        config = super().get_config()
        config.update(
            lambda2=self.lambda2,
            margin=self.margin,
            num_classes=self.num_classes,
            norm=self.norm,
            seed=self.seed,
        )
        return config
