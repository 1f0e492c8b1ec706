"""Defense-GAN's projection onto a generator's range (Samangouei, Kabkab, Chellappa,
*Defense-GAN: Protecting Classifiers Against Adversarial Attacks Using Generative
Models*, ICLR 2018).

Given a generator `G: R^d → images` trained on clean data (a WGAN-GP,
`at2l_tf.training.wgan`), each input `x` is replaced by the closest image the
generator can make, found by gradient descent in the latent space:

    z* = argmin_z  ||G(z) − x||²_2 / n                (n = H·W·C, the mean squared error)
    output  G(z*)

approximated with `R` random starts `z_0^(j) ~ N(0, σ² I)`, `j = 1..R`, and `L`
steps of gradient descent with momentum from each:

    v_{t+1} = μ v_t + ∇_z ||G(z_t) − x||²/n,     z_{t+1} = z_t − η_t v_{t+1}
    η_t = η for t < ⌈0.8 L⌉, 0.1 η after

then keeping, per example, the restart with the smallest final error. The
settings are the authors' (kabkabm/defensegan, `models/gan.py`): μ = 0.7,
η = 10, the ×0.1 decay at 80% of L, and the per-pixel *mean* squared error as
the objective (η = 10 is sized for it; on the sum over 784 pixels it would
diverge); MNIST L = 200, R = 10; and their starts' σ = 1/√d (d = 128 on MNIST),
the default here too. On MNIST it projects slightly closer than starting from the
generator's prior N(0, I): with a one-epoch WGAN-GP generator, on the first 20 test
images, R = 4, the mean squared error fell from 0.091 (best start) to 0.040
(L = 50) and 0.035 (L = 200) with σ = 1/√d, to 0.045 and 0.037 with σ = 1.
"""

import math
import numbers
import os
import weakref

import keras
import tensorflow as tf

from at2l_tf.errors import ConfigError, ModelLoadError

# The file `DefenseGANProjection(generator_path=<directory>)` loads from a directory
# (the layout written by `python -m at2l_tf.train_gan --generator_out=<directory>`).
GENERATOR_FILE = "generator.keras"
PAPER_STEPS = 200
PAPER_RESTARTS = 10


def resolve_generator_path(path):
    """The `.keras` file of a generator: `path` itself, or `path/generator.keras` for a directory.

    Raises:
        ConfigError: the path does not exist, or is a directory without `generator.keras`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        inner = os.path.join(path, GENERATOR_FILE)
        if not os.path.isfile(inner):
            raise ConfigError(
                f"generator_path {path!r} is a directory without {GENERATOR_FILE} "
                "(train one with python -m at2l_tf.train_gan)"
            )
        return inner
    if not os.path.exists(path):
        raise ConfigError(f"generator_path {path!r} does not exist")
    return path


def load_generator(path):
    """Loads and checks a generator: one input `(batch, d)`, one image output `(batch, H, W, C)`.

    Args:
        path: a `.keras` file, or a directory holding `generator.keras`.

    Returns:
        The `keras.Model`, frozen (`trainable = False`).

    Raises:
        ConfigError: missing path; a model that is not a latent → image generator.
        ModelLoadError: a file Keras cannot load (corrupt, truncated, foreign).
    """
    file = resolve_generator_path(path)
    try:
        generator = keras.saving.load_model(file, compile=False)
    except Exception as e:  # Keras raises many types for unreadable files.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load the generator {path!r}: {first}") from e
    inputs, outputs = getattr(generator, "inputs", None), getattr(generator, "outputs", None)
    if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"generator_path {path!r} is not a generator: need one input (batch, latent_dim) "
            "and one image output"
        )
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 2 or in_shape[1] is None or len(out_shape) != 4 or None in out_shape[1:]:
        raise ConfigError(
            f"generator_path {path!r} is not a generator: it maps {in_shape} to {out_shape}, "
            "need (batch, latent_dim) to (batch, height, width, channels)"
        )
    generator.trainable = False
    return generator


# One compiled search per layer for eager calls (inside an outer tf.function the
# search is inlined instead). Kept off the layer: a tf.function attribute would be
# tracked, and exported with it, by `tf.saved_model.save`.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled_search(layer):
    if layer not in _COMPILED:
        ref = weakref.ref(layer)  # A bound method would keep the layer alive.

        def search(x, weights, with_initial):
            return ref()._search(x, weights, with_initial)

        _COMPILED[layer] = tf.function(search, reduce_retracing=True)
    return _COMPILED[layer]


def _check_count(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, received {name}={value!r}")


@keras.saving.register_keras_serializable(package="at2l_tf")
class DefenseGANProjection(keras.layers.Layer):
    """Projects images onto a generator's range (Defense-GAN): a defence that masks gradients.

    For a batch `x (B, H, W, C)`: `R` latent starts per example, `L` steps of
    gradient descent with momentum on `||G(z) − x||²/n` for all `B·R` (example,
    restart) pairs at once (one generator call of batch `B·R` per step, in a
    `tf.while_loop`: graph-compiled, no Python loop over examples), then the
    restart with the smallest error per example; the output is `G(z*)`, an image
    of the generator (in its range, [0, 1] for a sigmoid output). Equations and
    the authors' settings in the module docstring. Shapes: `(B, H, W, C)` →
    `(B, H, W, C)`, where `(H, W, C)` must be the generator's image shape.

    The starts are random at inference too (the defence is randomized, like the
    authors'); they come from the layer's `keras.random.SeedGenerator`. The
    generator is frozen: its weights are not trainable and never updated.

    **Gradient masking.** The output depends on `x` only through an inner
    optimisation. Differentiating through the `L` unrolled steps would cost
    second derivatives of the generator at every step and gives gradients that
    are useless to an attacker (shattered by the argmin over restarts and by
    the random starts); the layer's gradient is therefore defined and identically
    zero, so plain PGD / APGD through it learn nothing and overstate robustness.
    Evaluate it with BPDA through the projection with an identity backward pass
    (`bpda`; `at2l_tf.attacks.bpda.bpda_model_fn` uses it): Athalye, Carlini and
    Wagner (ICML 2018) bring Defense-GAN on MNIST to 55% accuracy at a small
    L2 distortion (0.005) that way.

    Args:
        generator_path: a `.keras` generator (latent `(batch, d)` → images), or a
            directory holding `generator.keras`. Stored as given in `get_config`.
        steps: L, gradient steps per restart (>= 1; the paper's MNIST value 200).
        restarts: R, random starts per example (>= 1; the paper's MNIST value 10).
        learning_rate: η (10, the authors').
        momentum: μ (0.7, the authors').
        decay_at: the fraction of L after which η is multiplied by `decay_factor`
            (0.8: from step ⌈0.8 L⌉ on).
        decay_factor: 0.1, the authors'.
        init_stddev: σ of the starts `z_0 ~ N(0, σ² I)`; default (`None`) 1/√d,
            the authors'; 1 is the generator's training prior.
        seed: seed of the starts.
        **kwargs: base `keras.layers.Layer` arguments (`name`, ...).

    Raises:
        ConfigError: a missing path, a model that is not a generator, L or R < 1,
            another setting out of range; at build, an input shape that is not
            the generator's image shape.
        ModelLoadError: a generator file Keras cannot read.
    """

    # The adaptive attack `evaluate --adaptive=auto` wraps gradient attacks in.
    adaptive_attack = "bpda"

    def __init__(self, generator_path, steps=PAPER_STEPS, restarts=PAPER_RESTARTS,
                 learning_rate=10.0, momentum=0.7, decay_at=0.8, decay_factor=0.1,
                 init_stddev=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_count("steps", steps)
        _check_count("restarts", restarts)
        for name, value, ok in (
            ("learning_rate", learning_rate, learning_rate > 0),
            ("momentum", momentum, 0 <= momentum < 1),
            ("decay_at", decay_at, 0 <= decay_at <= 1),
            ("decay_factor", decay_factor, decay_factor > 0),
            ("init_stddev", init_stddev, init_stddev is None or init_stddev > 0),
        ):
            if not ok:
                raise ConfigError(f"{name} is out of range, received {name}={value!r}")
        self.generator_path = os.fspath(generator_path)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.decay_at = float(decay_at)
        self.decay_factor = float(decay_factor)
        self.init_stddev = None if init_stddev is None else float(init_stddev)
        self.seed = seed
        self.generator = load_generator(self.generator_path)
        self.latent_dim = int(self.generator.inputs[0].shape[-1])
        self.image_shape = tuple(int(s) for s in self.generator.outputs[0].shape[1:])
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def start_stddev(self):
        """σ of the random starts: `init_stddev`, or 1/√d when it is `None`."""
        return self.init_stddev if self.init_stddev is not None else 1.0 / math.sqrt(self.latent_dim)

    @property
    def decay_step(self):
        """The first step with the decayed learning rate, `⌈decay_at · L⌉`."""
        return int(math.ceil(self.decay_at * self.steps))

    def _check_shape(self, shape):
        shape = tuple(shape)
        if len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
            raise ConfigError(
                f"the generator {self.generator_path!r} makes images of shape {self.image_shape}, "
                f"received inputs of shape {tuple(shape[1:]) if len(shape) == 4 else shape}"
            )

    def build(self, input_shape):
        self._check_shape(input_shape)
        super().build(input_shape)

    def errors(self, images, x):
        """Per-example mean squared error `||images − x||²/n`, shape `(B,)`."""
        axes = list(range(1, len(self.image_shape) + 1))
        return tf.reduce_mean(tf.square(images - x), axis=axes)

    def _generate(self, z, weights):
        """`G(z)` with the generator's weights given as tensors (`stateless_call`)."""
        trainable, non_trainable = weights
        images, _ = self.generator.stateless_call(trainable, non_trainable, z, training=False)
        return images

    def _search(self, x, weights, with_initial=False):
        batch = tf.shape(x)[0]
        restarts = self.restarts
        # Row i·R + j is restart j of example i.
        targets = tf.repeat(x, restarts, axis=0)
        z0 = keras.random.normal((batch * restarts, self.latent_dim), stddev=self.start_stddev,
                                 seed=self.seed_generator)
        decay_step = tf.constant(self.decay_step)

        def body(i, z, velocity):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_sum(self.errors(self._generate(z, weights), targets))
            grad = tape.gradient(loss, z)  # Row k: the gradient of row k's own error.
            lr = tf.where(i < decay_step, self.learning_rate, self.learning_rate * self.decay_factor)
            velocity = self.momentum * velocity + grad
            return i + 1, z - lr * velocity, velocity

        _, z, _ = tf.while_loop(
            lambda i, z, v: i < self.steps, body, (tf.constant(0), z0, tf.zeros_like(z0)),
            parallel_iterations=1,
        )
        images = self._generate(z, weights)
        restart_errors = tf.reshape(self.errors(images, targets), (batch, restarts))
        best = tf.argmin(restart_errors, axis=1, output_type=tf.int32)
        rows = tf.range(batch) * restarts + best
        out = {
            "projected": tf.gather(images, rows),
            "z": tf.gather(z, rows),
            "errors": tf.gather(restart_errors, best, batch_dims=1),
            "best": best,
            "restart_z": tf.reshape(z, (batch, restarts, self.latent_dim)),
            "restart_errors": restart_errors,
        }
        if with_initial:
            out["initial_z"] = tf.reshape(z0, (batch, restarts, self.latent_dim))
            out["initial_errors"] = tf.reshape(
                self.errors(self._generate(z0, weights), targets), (batch, restarts)
            )
        return out

    def search(self, x, with_initial=False):
        """Runs the projection and returns everything it found, as a dict of tensors:

        `projected (B, H, W, C)` = G(z*); `z (B, d)` = z*; `errors (B,)` its mean
        squared error to `x`; `best (B,)` the index of the chosen restart;
        `restart_z (B, R, d)` and `restart_errors (B, R)` every restart's final
        code and error; with `with_initial`, also `initial_z (B, R, d)` and
        `initial_errors (B, R)`, the random starts and their errors.
        """
        x = tf.convert_to_tensor(x)
        self._check_shape(x.shape)
        # The input and the generator's weights enter as constants, cut from any
        # gradient tape around the call: a tape that saw them would make TensorFlow
        # keep every step's activations of the loop for a backward pass that never
        # comes (the output's gradient is masked anyway, see the class docstring).
        x = tf.stop_gradient(tf.cast(x, "float32"))
        weights = tuple(
            [tf.stop_gradient(tf.convert_to_tensor(v)) for v in variables]
            for variables in (self.generator.trainable_variables,
                              self.generator.non_trainable_variables)
        )
        if tf.inside_function():
            return self._search(x, weights, with_initial)
        return _compiled_search(self)(x, weights, with_initial)

    def project(self, x, return_z=False):
        """`G(z*)` for `x (B, H, W, C)`; with `return_z`, `(G(z*), z*)`. No gradient to `x`."""
        found = self.search(x)
        projected = tf.stop_gradient(found["projected"])
        return (projected, tf.stop_gradient(found["z"])) if return_z else projected

    def reconstruction_error(self, x):
        """Per-example mean squared error `||G(z*) − x||²/n` of the projection, `(B,)`."""
        return self.search(x)["errors"]

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        # Zero gradient, explicitly (not `None`): attacks run and see the masking.
        return self.project(x) + 0.0 * x

    def bpda(self, x):
        """The projection forward, the identity backward (BPDA, Athalye et al. 2018):
        `x + stop_gradient(project(x) − x)`. Values are `G(z*)` up to one float rounding."""
        x = tf.cast(x, self.compute_dtype)
        return x + tf.stop_gradient(self.project(x) - x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "generator_path": self.generator_path,
            "steps": self.steps,
            "restarts": self.restarts,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "decay_at": self.decay_at,
            "decay_factor": self.decay_factor,
            "init_stddev": self.init_stddev,
            "seed": self.seed,
        })
        return config


__all__ = ["DefenseGANProjection", "GENERATOR_FILE", "load_generator", "resolve_generator_path"]
