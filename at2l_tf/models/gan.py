"""The MNIST generator and critic of Defense-GAN (Samangouei, Kabkab, Chellappa,
*Defense-GAN: Protecting Classifiers Against Adversarial Attacks Using Generative
Models*, ICLR 2018), trained as a WGAN-GP by `at2l_tf.training.wgan`.

The architecture is the one of the authors' MNIST model (kabkabm/defensegan,
`models/dataset_models.py`, after Gulrajani et al.'s WGAN-GP MNIST code), without
batch normalisation (the WGAN-GP critic must not use it, and the MNIST
generator of Gulrajani et al. does not either):

    generator  z (128,) → dense 4·4·256, ReLU → (4, 4, 256)
               → 5×5 stride-2 transposed conv 128, ReLU → (8, 8, 128) → crop → (7, 7, 128)
               → 5×5 stride-2 transposed conv 64, ReLU  → (14, 14, 64)
               → 5×5 stride-2 transposed conv 1, sigmoid → (28, 28, 1) in [0, 1]
    critic     x (28, 28, 1) → three 5×5 stride-2 convs 64 / 128 / 256, LeakyReLU 0.2
               → (4, 4, 256) → flatten → dense 1 (a score, no activation)

The authors' released critic is twice as wide (128 / 256 / 512); 64 / 128 / 256
is Gulrajani et al.'s MNIST critic, cheaper on a CPU.

These builders are not in the classifier registry (`at2l_tf.models.get_model`,
`--model`): they do not map images to logits. Both use only built-in Keras
layers, so a saved generator loads with `keras.saving.load_model` and no custom
objects.
"""

import keras
from keras import layers

DEFAULT_LATENT_DIM = 128
IMAGE_SHAPE = (28, 28, 1)


def mnist_generator(latent_dim=DEFAULT_LATENT_DIM, width=64, name="mnist_generator"):
    """Defense-GAN's MNIST generator: `z (batch, latent_dim)` → images `(batch, 28, 28, 1)` in [0, 1].

    Args:
        latent_dim: size of the latent code `z` (128 in the paper).
        width: channels of the last hidden layer; the others are 2× and 4× it.
        name: model name.

    Returns:
        A functional `keras.Model`.
    """
    if latent_dim < 1 or width < 1:
        raise ValueError(
            f"latent_dim and width must be >= 1, received latent_dim={latent_dim}, width={width}"
        )
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(4 * 4 * 4 * width, activation="relu", name="dense")(z)
    x = layers.Reshape((4, 4, 4 * width))(x)
    x = layers.Conv2DTranspose(2 * width, 5, strides=2, padding="same", activation="relu",
                               name="deconv1")(x)
    # 8×8 → 7×7 (the top-left corner, as the authors' `output[:, :7, :7, :]`), so that
    # two more stride-2 layers reach 28×28.
    x = layers.Cropping2D(((0, 1), (0, 1)), name="crop")(x)
    x = layers.Conv2DTranspose(width, 5, strides=2, padding="same", activation="relu",
                               name="deconv2")(x)
    images = layers.Conv2DTranspose(1, 5, strides=2, padding="same", activation="sigmoid",
                                    name="deconv3", dtype="float32")(x)  # float32 under mixed precision.
    return keras.Model(z, images, name=name)


def mnist_critic(width=64, input_shape=IMAGE_SHAPE, name="mnist_critic"):
    """The WGAN-GP critic: images `(batch, 28, 28, 1)` → scores `(batch, 1)` (unbounded).

    Args:
        width: channels of the first convolution; the next two are 2× and 4× it.
        input_shape: image shape.
        name: model name.

    Returns:
        A functional `keras.Model`, without normalisation layers (the gradient
        penalty is per example, which batch normalisation would break).
    """
    images = keras.Input(input_shape, name="images")
    x = images
    for i, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = layers.Conv2D(filters, 5, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"lrelu{i}")(x)
    x = layers.Flatten()(x)
    score = layers.Dense(1, name="score", dtype="float32")(x)  # float32 under mixed precision.
    return keras.Model(images, score, name=name)


__all__ = ["DEFAULT_LATENT_DIM", "IMAGE_SHAPE", "mnist_critic", "mnist_generator"]
