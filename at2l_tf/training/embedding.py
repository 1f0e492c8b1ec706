"""The classifier's penultimate features, from the same forward pass as its logits.

TLA (Mao et al., 2019) puts the triplet on the *embedding*: the input of the
final (logits) layer. `with_embedding(classifier)` returns a functional model
`images -> [logits, embedding]` built from the classifier's own layers (it owns
no weights and costs no extra forward pass), with the defence layer of
`defenses.defended_model` in front when there is one.
"""

import keras

from at2l_tf import defenses


def with_embedding(classifier):
    """`images -> [logits, embedding]`, sharing `classifier`'s layers and weights.

    Args:
        classifier: a functional `keras.Model` returning logits, possibly a
            `defenses.defended_model` (defence layer, then the network).

    Returns:
        A two-output functional `keras.Model`.

    Raises:
        ValueError: the network has no penultimate layer: its logits are not
            the output of one layer applied to features that depend on trainable
            weights (e.g. a linear model on the pixels), or it is not functional.
    """
    layer, net = defenses.split(classifier)
    two = _net_with_embedding(net)
    if layer is None:
        return two
    inputs = keras.Input(tuple(classifier.input_shape[1:]), name="images")
    return keras.Model(inputs, two(layer(inputs)), name=f"{classifier.name}_with_embedding")


def check_has_embedding(classifier):
    """Raises `ValueError` (see `with_embedding`) unless the classifier has a penultimate layer."""
    with_embedding(classifier)


def _net_with_embedding(net):
    outputs = getattr(net, "outputs", None)
    if not outputs or len(outputs) != 1 or not net.layers:
        raise ValueError(
            f"triplet_features='embedding' needs a functional model with one output, "
            f"received {net.name!r}"
        )
    last = net.layers[-1]
    try:
        embedding = last.input
        is_output = last.output is outputs[0]
    except (AttributeError, ValueError):  # A layer called more than once, or never.
        embedding, is_output = None, False
    # One input tensor, not a list of one: called with a tensor, Keras would warn.
    inputs = net.inputs[0] if len(net.inputs) == 1 else net.inputs
    trunk = None
    if is_output and not isinstance(embedding, (list, tuple, dict)):
        trunk = keras.Model(inputs, embedding)
    if trunk is None or not trunk.trainable_weights:
        raise ValueError(
            f"model {net.name!r} has no penultimate layer for triplet_features='embedding' "
            "(its logits layer must take features computed by trainable layers)"
        )
    return keras.Model(inputs, [outputs[0], embedding], name=f"{net.name}_with_embedding")
