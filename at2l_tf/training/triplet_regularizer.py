"""`TripletRegularizer`: the λ2 term of Eq. 2 as a Keras layer that calls `add_loss`.

The one place where the triplet term is added to a training objective
(`AT2LModel` adds it on top of `at`, `trades`, `mart` or clean CE).
"""

import keras
import tensorflow as tf

from at2l_tf import losses

FEATURES = ("logits", "embedding")


@keras.saving.register_keras_serializable(package="at2l_tf")
class TripletRegularizer(keras.layers.Layer):
    """Adds `λ2 / k · Σ_i h_i` (paper Eq. 2) to the owning model's losses.

    `h_i = max(d(g(x'_i), g(x_i)) - d(g(x'_i), g(x_n_i)) + α, 0)` is the triplet
    hinge with in-batch negatives (`losses.triplet_term`). `k` is the *global*
    batch size, so that under `MirroredStrategy` the per-replica terms sum to
    the loss of the whole batch.

    Args:
        lambda2: weight λ2 of the triplet term (>= 0).
        margin: margin α (>= 0).
        num_classes: number of classes (decides the negative selection rule).
        distance: the distance d: `"linf"` (default, the paper's), `"l2"`, `"l1"`
            or `"cosine"` (1 − cos, on L2-normalized features).
        features: what g is, recorded for the owner (which passes the
            features in): `"logits"` (the paper's) or `"embedding"` (the
            penultimate layer's output, TLA).
        negative: `"random"` (the paper's: a random in-batch example of the
            class x' is pushed to) or `"hardest"` (TLA: the closest clean
            example of another class under d).
        seed: seed of the random choice among candidate negatives.

    Call arguments:
        labels: int labels `(k_replica,)`.
        clean_features: `(k_replica, D)` features g(x) of the clean batch.
        adv_features: `(k_replica, D)` features g(x') of its adversarial examples.
        global_batch_size: scalar float, examples in the global batch.
        adv_logits: `(k_replica, C)` logits f(x'), which pick the `random`
            negatives' class; default `adv_features` (features = logits).

    Returns:
        The per-example hinge `(k_replica,)` (for metrics).
    """

    def __init__(self, lambda2, margin, num_classes, distance="linf", seed=None, features="logits",
                 negative="random", **kwargs):
        super().__init__(**kwargs)
        if lambda2 < 0:
            raise ValueError(f"lambda2 must be >= 0, received lambda2={lambda2}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, received margin={margin}")
        if distance not in losses.DISTANCES:
            raise ValueError(f"distance must be one of {losses.DISTANCES}, received distance={distance!r}")
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, received features={features!r}")
        if negative not in losses.NEGATIVES:
            raise ValueError(
                f"negative must be one of {losses.NEGATIVES}, received negative={negative!r}"
            )
        self.lambda2 = float(lambda2)
        self.margin = float(margin)
        self.num_classes = int(num_classes)
        self.distance = distance
        self.features = features
        self.negative = negative
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, labels, clean_features, adv_features, global_batch_size, adv_logits=None):
        adv_features = tf.cast(adv_features, tf.float32)
        hinge = losses.triplet_term(
            labels,
            None,
            adv_features if adv_logits is None else tf.cast(adv_logits, tf.float32),
            margin=self.margin,
            num_classes=self.num_classes,
            distance=self.distance,
            seed=self.seed_generator,
            negative=self.negative,
            clean_features=tf.cast(clean_features, tf.float32),
            adv_features=adv_features,
        )
        self.add_loss(self.lambda2 * tf.reduce_sum(hinge) / global_batch_size)
        return hinge

    def describe(self):
        """The term's settings for `results.json`: features, distance, negative, λ2, α."""
        return {
            "features": self.features,
            "distance": self.distance,
            "negative": self.negative,
            "lambda2": self.lambda2,
            "margin": self.margin,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            lambda2=self.lambda2,
            margin=self.margin,
            num_classes=self.num_classes,
            distance=self.distance,
            features=self.features,
            negative=self.negative,
            seed=self.seed,
        )
        return config
