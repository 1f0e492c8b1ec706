"""WGAN-GP (Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, *Improved Training of
Wasserstein GANs*, NeurIPS 2017), the generative model of Defense-GAN.

With critic `D`, generator `G`, real images `x`, fakes `x̃ = G(z)`, `z ~ N(0, I)`,
and `x̂ = x + ε (x̃ − x)`, `ε ~ U[0, 1]` per example:

    L_D = E[D(x̃)] − E[D(x)] + λ E[(||∇_x̂ D(x̂)||_2 − 1)²]          (critic, λ = 10)
    L_G = −E[D(G(z))]                                              (generator)

`E[D(x)] − E[D(x̃)]` estimates the Wasserstein-1 distance between the data and
the generator's distribution (reported as the `wasserstein` metric). The critic
takes `n_critic` (5) steps per generator step, both with Adam(1e-4, β1 = 0.5,
β2 = 0.9): Defense-GAN's MNIST settings (Samangouei et al. 2018,
kabkabm/defensegan).

The gradient norm of the penalty is taken over *all* image axes (H, W, C) of
each example, as the paper defines it. The Defense-GAN authors' released code
sums the squared gradient over axis 1 only (`reduction_indices=[1]` on an NHWC
tensor: the rows), which penalises one norm per image column instead of the
norm of the whole gradient — a known bug, not reproduced here.
"""

import keras
import tensorflow as tf

DEFAULT_N_CRITIC = 5
DEFAULT_GP_WEIGHT = 10.0
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_BETA_1 = 0.5
DEFAULT_BETA_2 = 0.9


def gradient_penalty(critic, real, fake, eps):
    """WGAN-GP's penalty `mean_i (||∇ D(x̂_i)||_2 − 1)²`, `x̂_i = real_i + eps_i (fake_i − real_i)`.

    The norm runs over every axis of an example but the batch axis (for images
    `(B, H, W, C)`: H, W and C together). Differentiable with respect to the
    critic's weights (the gradient is taken on a nested tape), so it can sit in
    the critic's loss.

    Args:
        critic: callable `(B, ...) → (B,)` or `(B, 1)` scores; examples must
            not interact (no batch normalisation), or the per-example gradients
            mix.
        real: real examples `(B, ...)`.
        fake: generated examples, the shape of `real`.
        eps: interpolation weights `(B,)` (or any shape broadcasting to
            `(B, 1, ..., 1)`), in [0, 1].

    Returns:
        A scalar tensor.
    """
    real = tf.convert_to_tensor(real)
    fake = tf.cast(fake, real.dtype)
    eps = tf.reshape(tf.cast(eps, real.dtype), [-1] + [1] * (real.shape.rank - 1))
    interpolates = real + eps * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(interpolates)
        scores = critic(interpolates, training=True)
    grads = tape.gradient(scores, interpolates)
    axes = list(range(1, grads.shape.rank))
    # The tiny constant keeps the square root's gradient finite at a zero gradient.
    norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=axes) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def _adam(learning_rate, beta_1, beta_2):
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2)


class WGANGP(keras.Model):
    """Trains a generator and a critic as a WGAN-GP with `fit()`.

    Each training batch holds `n_critic · b` real images (a pipeline batched at
    `n_critic · batch_size`; `(images, labels)` batches are accepted, labels
    ignored): `train_step` takes `n_critic` critic steps, each on its own `b`
    real images and `b` fresh fakes, then one generator step on `b` fresh
    latent codes. Extra images (when the batch is not a multiple of `n_critic`)
    are unused. `test_step` evaluates the same losses on a batch without updating.

    Metrics (means over the epoch): `critic_loss` (L_D with the penalty),
    `generator_loss` (L_G), `gradient_penalty` (before weighting by λ) and
    `wasserstein` (E[D(x)] − E[D(G(z))], the critic's estimate of W1).

    Calling the model maps latent codes to images through the generator.

    Args:
        generator: `keras.Model` `z (B, latent_dim)` → images.
        critic: `keras.Model` images → scores `(B, 1)`.
        n_critic: critic steps per generator step (>= 1; 5 in the paper).
        gp_weight: λ, weight of the gradient penalty (>= 0; 10 in the paper).
        seed: seed of the latent codes and interpolation weights.
        **kwargs: base `keras.Model` arguments.

    Example:
        >>> gan = WGANGP(gan_models.mnist_generator(), gan_models.mnist_critic())
        >>> gan.compile()  # Adam(1e-4, 0.5, 0.9) for both
        >>> gan.fit(images.batch(5 * 64, drop_remainder=True), epochs=10)
    """

    def __init__(self, generator, critic, *, n_critic=DEFAULT_N_CRITIC,
                 gp_weight=DEFAULT_GP_WEIGHT, seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(n_critic) != n_critic or n_critic < 1:
            raise ValueError(f"n_critic must be an integer >= 1, received n_critic={n_critic!r}")
        if not gp_weight >= 0:
            raise ValueError(f"gp_weight must be >= 0, received gp_weight={gp_weight!r}")
        self.generator = generator
        self.critic = critic
        self.n_critic = int(n_critic)
        self.gp_weight = float(gp_weight)
        self.latent_dim = int(generator.input_shape[-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.critic_loss_tracker = keras.metrics.Mean(name="critic_loss")
        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.gp_tracker = keras.metrics.Mean(name="gradient_penalty")
        self.wasserstein_tracker = keras.metrics.Mean(name="wasserstein")
        self.built = True  # The generator and the critic come built.

    def compile(self, critic_optimizer=None, generator_optimizer=None, *,
                learning_rate=DEFAULT_LEARNING_RATE, beta_1=DEFAULT_BETA_1,
                beta_2=DEFAULT_BETA_2, **kwargs):
        """Sets the two optimizers (default: Adam(learning_rate, beta_1, beta_2) each).

        The critic's optimizer is `self.optimizer` (Keras' step counter); the
        generator's is `self.generator_optimizer`. Both are built here, so that
        a checkpoint can be restored into them before training.
        """
        critic_optimizer = critic_optimizer or _adam(learning_rate, beta_1, beta_2)
        self.generator_optimizer = generator_optimizer or _adam(learning_rate, beta_1, beta_2)
        super().compile(optimizer=critic_optimizer, **kwargs)
        self.optimizer.build(self.critic.trainable_variables)
        self.generator_optimizer.build(self.generator.trainable_variables)

    @property
    def critic_optimizer(self):
        return self.optimizer

    @property
    def metrics(self):
        return [self.critic_loss_tracker, self.generator_loss_tracker, self.gp_tracker,
                self.wasserstein_tracker]

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def sample_latent(self, batch_size):
        """`z ~ N(0, I)` of shape `(batch_size, latent_dim)`, from the model's seed generator."""
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def _critic_losses(self, real, fake, eps):
        """`(L_D, gradient penalty, W1 estimate)` on one batch of real and fake images."""
        real_scores = self.critic(real, training=True)
        fake_scores = self.critic(fake, training=True)
        wasserstein = tf.reduce_mean(real_scores) - tf.reduce_mean(fake_scores)
        gp = gradient_penalty(self.critic, real, fake, eps)
        return -wasserstein + self.gp_weight * gp, gp, wasserstein

    def _generator_loss(self, z, training):
        return -tf.reduce_mean(self.critic(self.generator(z, training=training), training=training))

    def _draw(self, batch):
        z = self.sample_latent(batch)
        eps = keras.random.uniform((batch,), seed=self.seed_generator)
        return z, eps

    @staticmethod
    def _images(data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        return tf.cast(images, "float32")

    def train_step(self, data):
        real = self._images(data)
        batch = tf.shape(real)[0] // self.n_critic
        critic_vars = self.critic.trainable_variables
        for i in range(self.n_critic):  # A small static count: unrolled in the graph.
            chunk = real[i * batch:(i + 1) * batch]
            z, eps = self._draw(batch)
            # Fakes outside the tape: the critic step needs no gradient through G.
            fake = tf.stop_gradient(self.generator(z, training=True))
            with tf.GradientTape() as tape:
                loss, gp, wasserstein = self._critic_losses(chunk, fake, eps)
                scaled = self.optimizer.scale_loss(loss)  # float16: LossScaleOptimizer.
            self.optimizer.apply(tape.gradient(scaled, critic_vars), critic_vars)
            self.critic_loss_tracker.update_state(loss)
            self.gp_tracker.update_state(gp)
            self.wasserstein_tracker.update_state(wasserstein)
        generator_vars = self.generator.trainable_variables
        z = self.sample_latent(batch)
        with tf.GradientTape() as tape:
            g_loss = self._generator_loss(z, training=True)
            scaled = self.generator_optimizer.scale_loss(g_loss)
        self.generator_optimizer.apply(tape.gradient(scaled, generator_vars), generator_vars)
        self.generator_loss_tracker.update_state(g_loss)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        real = self._images(data)
        z, eps = self._draw(tf.shape(real)[0])
        fake = self.generator(z, training=False)
        loss, gp, wasserstein = self._critic_losses(real, fake, eps)
        self.critic_loss_tracker.update_state(loss)
        self.gp_tracker.update_state(gp)
        self.wasserstein_tracker.update_state(wasserstein)
        self.generator_loss_tracker.update_state(-tf.reduce_mean(self.critic(fake, training=False)))
        return {m.name: m.result() for m in self.metrics}

    def checkpoint(self, **extra):
        """A `tf.train.Checkpoint` of everything training changes: both networks,
        both optimizers (moments and step counts) and the random state, plus
        `extra` trackables (e.g. an epoch counter). Call after `compile`."""
        return tf.train.Checkpoint(
            generator=self.generator,
            critic=self.critic,
            critic_optimizer=self.optimizer,
            generator_optimizer=self.generator_optimizer,
            seed_state=self.seed_generator.state.value,
            **extra,
        )


__all__ = ["WGANGP", "gradient_penalty"]
