"""Architectures by name; every model returns logits.

    >>> from at2l_tf import models
    >>> model = models.get_model("mnist_a")
"""

from at2l_tf.models import cats_vs_dogs, cifar10, mnist  # noqa: F401  (registration)
from at2l_tf.models.registry import available_models, get_entry, get_model

__all__ = ["available_models", "get_entry", "get_model"]
