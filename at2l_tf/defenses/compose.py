"""A defence layer in front of a classifier, as one Keras model, and back apart.

`defended_model(layer, net)` is the model the package trains and exports:
images in [0, 1] → `layer` (named `preprocessing`) → `net` → logits, so that
the exported SavedModel serves the whole defence. `split(model)` returns the
two parts again: adaptive attacks need them separately (BPDA differentiates
`net` through a surrogate of `layer`; LS-PGA attacks `net` on the codes).
"""

import keras

from at2l_tf.defenses.defense_gan import DefenseGANProjection
from at2l_tf.defenses.random_resize_pad import RandomResizePad
from at2l_tf.defenses.thermometer import ThermometerEncoding

PREPROCESSING = ("none", "thermometer", "random_resize_pad", "defense_gan")
# Layers the classifier is trained without (and put in front of it afterwards):
# Defense-GAN's projection is a test-time defence (Samangouei et al. train the
# classifier on clean images), and running it in every training step would
# cost L·R generator passes per example.
TEST_TIME_ONLY = ("defense_gan",)
LAYER_NAME = "preprocessing"


def make_layer(name, image_shape, *, levels=16, min_size=None, output_size=None, generator=None,
               dgan_steps=50, dgan_restarts=4, seed=None):
    """The defence layer `name` for images of `image_shape`, or `None` for `"none"`.

    Args:
        name: one of `PREPROCESSING`.
        image_shape: `(H, W, C)` of the images.
        levels: thermometer levels.
        min_size, output_size: `RandomResizePad` sizes; default `H` and
            `H + ⌈H/7⌉` (28 → [28, 32) → 32 on MNIST, Xie et al.'s 299 → 331 scaled).
        generator, dgan_steps, dgan_restarts: `DefenseGANProjection`'s
            generator path, L and R.
        seed: seed of the random layer.
    """
    if name == "none":
        return None
    if name == "thermometer":
        return ThermometerEncoding(levels, name=LAYER_NAME)
    if name == "random_resize_pad":
        height, width = image_shape[0], image_shape[1]
        if height != width:
            raise ValueError(f"random_resize_pad needs square images, received {image_shape}")
        min_size = height if min_size is None else min_size
        output_size = default_output_size(height) if output_size is None else output_size
        return RandomResizePad(output_size, min_size, seed=seed, name=LAYER_NAME)
    if name == "defense_gan":
        # A generator of another image shape fails when the layer is built
        # (`defended_model`), before any attack or export.
        return DefenseGANProjection(
            generator, steps=dgan_steps, restarts=dgan_restarts, seed=seed, name=LAYER_NAME
        )
    raise ValueError(f"preprocessing must be one of {PREPROCESSING}, received {name!r}")


def layer_from_config(preprocessing, image_shape, seed=None):
    """The defence layer of a `config.PreprocessingConfig` (or `None`), via `make_layer`."""
    p = preprocessing
    return make_layer(
        p.name,
        image_shape,
        levels=p.thermometer_levels,
        min_size=p.resize_min,
        output_size=p.resize_output,
        generator=p.generator,
        dgan_steps=p.dgan_steps,
        dgan_restarts=p.dgan_restarts,
        seed=seed,
    )


def default_output_size(size):
    """Xie et al.'s 299 → 331 growth scaled: `size + ⌈size/7⌉` (28 → 32, 32 → 37)."""
    return size + -(-size // 7)


def defended_model(layer, net, image_shape):
    """`images → layer → net → logits` as one functional model (`net` alone if no layer)."""
    if layer is None:
        return net
    inputs = keras.Input(tuple(image_shape), name="images")
    return keras.Model(inputs, net(layer(inputs)), name=f"{LAYER_NAME}_{net.name}")


def split(model):
    """`(layer, net)` of a model built by `defended_model`; `(None, model)` otherwise."""
    try:
        layer = model.get_layer(LAYER_NAME)
    except ValueError:
        return None, model
    net = model.layers[-1]
    if net is layer or not isinstance(net, keras.Model):
        return None, model
    return layer, net


def inference_fns(model):
    """`(layer, model_fn, net_fn)` of a Keras classifier, in inference mode.

    `model_fn(x)` is `model(x, training=False)`; `layer` and `net_fn(z)`
    (`net(z, training=False)`) are the defence layer and the network behind
    it (`split`), or `None` without a layer: what `evaluation.adaptive.adapt`
    and `savedmodel.Classifier` take.
    """
    layer, net = split(model)

    def model_fn(x):
        return model(x, training=False)

    net_fn = None
    if layer is not None:

        def net_fn(z):
            return net(z, training=False)

    return layer, model_fn, net_fn


def layer_name(layer):
    """The `PREPROCESSING` name of a defence layer (`"none"` for `None`)."""
    if layer is None:
        return "none"
    if isinstance(layer, ThermometerEncoding):
        return "thermometer"
    if isinstance(layer, RandomResizePad):
        return "random_resize_pad"
    if isinstance(layer, DefenseGANProjection):
        return "defense_gan"
    raise ValueError(f"not a defence layer of this package: {layer!r}")
