"""Backward Pass Differentiable Approximation, BPDA (Athalye, Carlini, Wagner,
*Obfuscated Gradients Give a False Sense of Security*, ICML 2018, Section 4.1).

A preprocessing defence `g` in front of a classifier `f` that is not usefully
differentiable (a quantization such as the thermometer code, a projection onto a
generator's range) is attacked through

    h(x) = f(g(x))   forward,      ∇h(x) ≈ ∇f(g(x)) · ∇ĝ(x)   backward,

with `ĝ ≈ g` differentiable. In TensorFlow: `ĝ(x) + stop_gradient(g(x) − ĝ(x))`,
whose value is `g(x)` and whose gradient is `ĝ`'s. When `g(x) ≈ x` (a denoiser, a
projection), `ĝ` is the identity. The wrapped `model_fn` is then attacked with any
gradient attack of `at2l_tf.attacks` (PGD, APGD); the attack still sees the exact
forward, so its iterates are judged on the real defended model.
"""

import tensorflow as tf


def _straight_through(hard, soft):
    return soft + tf.stop_gradient(hard - soft)


def bpda_model_fn(classifier_fn, layer, *, surrogate=None):
    """`model_fn(x) = classifier_fn(layer(x))`, differentiated through a surrogate of `layer`.

    The backward pass of `layer` is, in order of preference:

    1. `surrogate(x)`, if given (a differentiable approximation of `layer`);
    2. `layer.bpda(x)`, if the layer has one — it returns the layer's exact output
       with a surrogate gradient (e.g. `ThermometerEncoding.bpda`, the ramp);
    3. the identity, for layers whose output has the input's shape (a projection
       or denoiser: `x + stop_gradient(layer(x) − x)`).

    Args:
        classifier_fn: callable mapping the layer's outputs to logits (call the
            classifier with `training=False`).
        layer: the defence, a callable (e.g. a Keras layer).
        surrogate: optional differentiable `ĝ` with `ĝ(x) ≈ layer(x)`, of the
            same output shape.

    Returns:
        `model_fn(x)` for the attacks: the exact logits of the defended model,
        with BPDA gradients.

    Raises:
        TypeError: `layer` (or `surrogate`) is not callable.
        ValueError: when called, if `layer` has neither `bpda` nor a `surrogate`
            and changes the shape of its input, so identity BPDA does not apply.
    """
    if not callable(layer):
        raise TypeError(f"layer must be callable, received layer={layer!r}")
    if surrogate is not None and not callable(surrogate):
        raise TypeError(f"surrogate must be callable, received surrogate={surrogate!r}")
    own = getattr(layer, "bpda", None)
    name = getattr(layer, "name", type(layer).__name__)

    def forward(x):
        x = tf.convert_to_tensor(x)
        if surrogate is not None:
            return _straight_through(layer(x), surrogate(x))
        if callable(own):
            return own(x)
        out = layer(x)
        if not out.shape.is_compatible_with(x.shape) or out.shape.rank != x.shape.rank:
            raise ValueError(
                f"layer {name!r} has no `bpda` method and maps shape {x.shape} to "
                f"{out.shape}, so identity BPDA does not apply: give the layer a "
                "`bpda(x)` method or pass `surrogate=`"
            )
        return _straight_through(tf.cast(out, x.dtype), x)

    def model_fn(x):
        return classifier_fn(forward(x))

    return model_fn
