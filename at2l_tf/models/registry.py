"""Model registry: architectures by name.

Every builder returns a functional `keras.Model` mapping float images in [0, 1]
to **logits** (no softmax): the triplet distance of Eq. 2 is measured on logits,
and the attacks take a `model_fn` that returns logits.
"""

import dataclasses

from at2l_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: object
    dataset: str
    description: str


_REGISTRY = {}


def register(name, dataset, description):
    """Decorator adding `builder(input_shape, num_classes)` to the registry."""

    def _wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, dataset, description)
        return builder

    return _wrap


def available_models():
    """Sorted names accepted by `get_model` and `--model`."""
    return tuple(sorted(_REGISTRY))


def get_entry(name):
    """Returns the `ModelEntry` of `name`, or raises a `ConfigError` listing the known names."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(available_models())}"
        )
    return _REGISTRY[name]


def get_model(name, input_shape=None, num_classes=None):
    """Builds model `name`.

    Args:
        name: registry name, see `available_models()`.
        input_shape: `(height, width, channels)`; default the shape of the
            model's dataset.
        num_classes: width of the logits; default the dataset's class count.

    Returns:
        A freshly initialised functional `keras.Model` returning logits.
    """
    from at2l_tf import data  # Local import: data imports TensorFlow only.

    entry = get_entry(name)
    spec = data.get_spec(entry.dataset)
    input_shape = tuple(input_shape or spec.image_shape)
    num_classes = num_classes or spec.num_classes
    model = entry.builder(input_shape, num_classes)
    return model
