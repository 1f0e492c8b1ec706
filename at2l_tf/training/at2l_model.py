"""`AT2LModel`: adversarial training with triplet loss in a custom `train_step`.

Algorithm 1 of the paper, one mini-batch `(x, y)` of size k at a time:

1. craft `x_adv` against the *current* weights, inside the compiled step, with
   the classifier called with `training=False` (dropout and batch norm must
   not change under attack), and stop gradients through it; the objective
   picks the attack (`Objective.inner_attack`: TRADES' KL attack for
   `trades`, the configured one otherwise);
2. forward `x` and `x_adv` (`training=True`) to logits `f(x)`, `f(x_adv)`
   (and, for `triplet_features="embedding"`, the penultimate features, from
   the same passes);
3. minimise the objective's batch mean plus, when on, the triplet term
   (`TripletRegularizer`, through `add_loss`; the negatives come from the
   clean pass), plus the classifier's weight regularizers.

The objectives (`training.objectives`, equations there) by `objective`:

   * `none`:   `1/k Σ CE(x_i, y_i)` (clean training; no attack is run);
   * `at`:     `1/((1+λ1) k) Σ [CE(x_i, y_i) + λ1 CE(x_adv_i, y_i)]`          (Eq. 1)
   * `at2l`:   Eq. 1 `+ λ2/k Σ max(d(f(x_adv_i), f(x_i)) - d(f(x_adv_i), f(x_n_i)) + α, 0)`  (Eq. 2)
   * `tr`:     `1/k Σ CE(x_i, y_i) + λ2/k Σ h_i` (triplet regularisation alone);
   * `trades`: `1/k Σ [CE(x_i, y_i) + β KL(f(x_i) ‖ f(x_adv_i))]`           (TRADES)
   * `mart`:   `1/k Σ [BCE(f(x_adv_i), y_i) + β KL(f(x_i) ‖ f(x_adv_i)) (1 − p_yi(x_i))]` (MART)

and λ2 > 0 adds the triplet term to `at`, `trades` and `mart` as well.

`k` is the global batch size: under `tf.distribute.MirroredStrategy` every
replica builds triplets within its own share of the batch and divides by the
global k, and the optimizer sums the replicas' gradients.

Batches may also be `(x, y, x_adv)`: the step then trains on the given
adversarial versions instead of crafting them (Algorithm 2, where `x_adv_i`
is one of the precomputed versions of `x_i` from several attacks and source
models; see `at2l_tf.training.ensemble`). Everything else is the same.

Three training ingredients go around the step, all off by default:

* **ε warm-up** (`set_training_eps`): the step's attack may run at a smaller ε
  than the validation's (`experiment` ramps it per epoch, see
  `experiment.training_eps`); `test_step` always attacks at the full ε;
* **AWP** (`awp_gamma` > 0; `training.awp`, equations there): before the update,
  the kernels are moved once in the direction that raises the loss, the
  gradient is taken there, and the weights are restored exactly; on from
  optimizer step `awp_start_step`;
* **weight averaging** (`ema` > 0; `training.weight_average`): an EMA of the
  weights, updated after every optimizer update, which the run returns.

Mixed precision (`at2l_tf.precision`): the classifier may be built under a
mixed policy (it computes in bfloat16 / float16, keeps float32 variables);
the images, the attack's steps and projection, and every loss stay float32
(logits are cast to float32 before any loss), and `train_step` scales the loss
for a `LossScaleOptimizer` (float16).

`fit()`, `evaluate()`, callbacks and progress bars work unchanged; `test_step`
shares `_compute_losses` with `train_step` (it attacks the validation batch too,
so `adv_acc` is robust accuracy under the training attack). Logits and
features are cast to float32 before every loss, and attacks see float32
logits, whatever the classifier's dtype policy.
"""

import warnings

import keras
import tensorflow as tf

from at2l_tf import attacks, defenses, identity, losses
from at2l_tf.training import awp as awp_lib
from at2l_tf.training import embedding, objectives
from at2l_tf.training.triplet_regularizer import TripletRegularizer
from at2l_tf.training.weight_average import WeightAverage


@keras.saving.register_keras_serializable(package="at2l_tf")
class AT2LModel(keras.Model):
    """Wraps a logits classifier and trains it with one objective, plus the triplet term.

    Args:
        classifier: a `keras.Model` mapping images to logits.
        objective: the recipe, one of `training.objectives.CHOICES`: `none`,
            `at` (Eq. 1), `at2l` (Eq. 2), `tr` (clean CE + triplet term),
            `trades` or `mart`. (`defense=`, its old name, still works with a
            DeprecationWarning; `norm=`, the old `triplet_distance=`, is refused.)
        attack: training attack name, one of `at2l_tf.attacks.TRAINING_ATTACKS`
            (`trades` replaces `pgd` by its KL attack, `trades_kl`).
        attack_params: keyword parameters of the attack (`eps`, `steps`,
            `step_size`, ...); `None` values mean the attack's defaults.
        lambda1: λ1, weight of the adversarial cross-entropy of Eq. 1 (>= 0).
        lambda2: λ2, weight of the triplet term (>= 0); `None`: 0.5 for
            `at2l` / `tr`, 0 (no triplet term) for the others
            (`objectives.resolve_lambda2`).
        margin: α, triplet margin (>= 0).
        triplet_distance: the triplet distance (`linf`, `l2`, `l1`, `cosine`).
        beta: β of `trades` / `mart` (>= 0); `None`: 1.0 for TRADES, 6.0 for MART.
        triplet_features: `logits` (the paper's) or `embedding` (the input of
            the classifier's final layer, from the same forward pass).
        triplet_negative: `random` (the paper's) or `hardest` (TLA).
        seed: seed of the negative selection.
        ema: decay d of the weights' exponential moving average (0: off; Gowal
            et al. 2020: 0.995 per step); the average is `weight_average`.
        awp_gamma: γ of adversarial weight perturbation (0: off; Wu et al.
            2020: 5e-3 with TRADES, 1e-2 with AT on CIFAR-10).
        awp_start_step: the optimizer step from which AWP is on (its warm-up).

    Attributes:
        objective_name: the recipe (`objective` above).
        objective: its `training.objectives.Objective` (the loss; `at2l` trains the `at` loss).

    Calling the model returns the classifier's logits.

    Example:
        >>> clf = at2l_tf.models.get_model("mnist_small")
        >>> model = AT2LModel(clf, objective="trades", attack="pgd", lambda2=0.5,
        ...                   attack_params={"eps": 0.3, "steps": 10})
        >>> model.compile(optimizer="adam")
        >>> model.fit(train_ds, epochs=3, validation_data=val_ds)
    """

    def __init__(
        self,
        classifier,
        *,
        objective="at2l",
        attack="pgd",
        attack_params=None,
        lambda1=1.0,
        lambda2=None,
        margin=0.5,
        triplet_distance="linf",
        beta=None,
        triplet_features="logits",
        triplet_negative="random",
        seed=None,
        ema=0.0,
        awp_gamma=0.0,
        awp_start_step=0,
        **kwargs,
    ):
        if "defense" in kwargs:  # The recipe's old name, as the command's deprecated --defense.
            objective = kwargs.pop("defense")
            warnings.warn("AT2LModel(defense=...) is deprecated: use objective=", DeprecationWarning, stacklevel=2)
        if "norm" in kwargs:
            raise TypeError(f"AT2LModel(norm=...) was removed: use triplet_distance=, received norm={kwargs['norm']!r}")
        super().__init__(**kwargs)
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), received ema={ema}")
        if awp_gamma < 0:
            raise ValueError(f"awp_gamma must be >= 0, received awp_gamma={awp_gamma}")
        if awp_start_step < 0:
            raise ValueError(f"awp_start_step must be >= 0, received awp_start_step={awp_start_step}")
        objectives.check_objective(objective)
        if lambda2 is not None and lambda2 < 0:
            raise ValueError(f"lambda2 must be >= 0, received lambda2={lambda2}")
        self.objective = objectives.for_objective(objective, lambda1=lambda1, beta=beta)
        self.uses_triplet = objectives.uses_triplet(objective, lambda2)
        self.crafts_adversarial = self.objective.needs_adversarial or self.uses_triplet
        if self.crafts_adversarial:
            attack = self.objective.inner_attack(attack)
            if attack not in attacks.TRAINING_ATTACKS:
                raise ValueError(
                    f"attack must be one of {attacks.TRAINING_ATTACKS} for training, "
                    f"received attack={attack!r}"
                )
        self.classifier = classifier
        self.objective_name = objective
        self.attack = attack
        self.attack_params = dict(attack_params or {})
        self.lambda1 = float(lambda1)
        self.beta = getattr(self.objective, "beta", None)
        self.seed = seed
        self._attack_fn, self._attack_target = None, classifier
        if self.crafts_adversarial:
            self._attack_fn, self._attack_target = _bind_attack(
                classifier, attack, self.attack_params
            )
        # The step's attack; another ε than the validation's during an ε warm-up.
        self._train_attack_fn = self._attack_fn
        self.training_eps = self.attack_params.get("eps")
        self.ema = float(ema)
        self.awp_gamma = float(awp_gamma)
        self.awp_start_step = int(awp_start_step)
        self.num_classes = int(classifier.output_shape[-1])
        self.triplet = TripletRegularizer(
            objectives.resolve_lambda2(objective, lambda2),
            margin,
            self.num_classes,
            distance=triplet_distance,
            features=triplet_features,
            negative=triplet_negative,
            seed=seed,
            name="triplet",
        )
        # Logits and penultimate features from one forward pass: a two-output
        # view of the classifier's own layers, held outside Keras' tracking so
        # that checkpoints list each weight once.
        self._forward_fn = None
        if self.uses_triplet and triplet_features == "embedding":
            self._forward_fn = _untracked_call(embedding.with_embedding(classifier))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_clean_tracker = keras.metrics.Mean(name="ce_clean")
        self.acc_metric = keras.metrics.SparseCategoricalAccuracy(name="acc")
        if self.crafts_adversarial:
            self.ce_adv_tracker = keras.metrics.Mean(name="ce_adv")
            self.adv_acc_metric = keras.metrics.SparseCategoricalAccuracy(name="adv_acc")
        if self.uses_triplet:
            self.triplet_tracker = keras.metrics.Mean(name="triplet")
        # Keras 3 `fit` with two or more workers (set by `training.distribute`):
        # see `_maybe_symbolic_build` and `_update_metrics`.
        self.multi_worker_workarounds = False
        # All weights live in the (functional, already built) classifier; mark
        # the wrapper built so that checkpoints can save it before any call.
        self.built = classifier.built
        self.weight_average = None
        if self.ema > 0:
            self.weight_average = WeightAverage(classifier.trainable_weights, self.ema, owner=self)

    @property
    def lambda2(self):
        return self.triplet.lambda2

    @property
    def margin(self):
        return self.triplet.margin

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    @property
    def metrics(self):
        tracked = [self.loss_tracker, self.ce_clean_tracker]
        if self.crafts_adversarial:
            tracked.append(self.ce_adv_tracker)
        if self.uses_triplet:
            tracked.append(self.triplet_tracker)
        tracked.append(self.acc_metric)
        if self.crafts_adversarial:
            tracked.append(self.adv_acc_metric)
        return tracked

    def set_training_eps(self, eps):
        """Makes the training step attack at radius `eps` (an ε warm-up).

        The attack's step size follows ε: a configured `step_size` is scaled by
        `eps / ε`, the default `2.5·eps/steps` does so by itself. Validation
        (`test_step`) keeps the full ε. The attacks take ε as a Python number,
        so the compiled step is rebuilt (at the next `fit`) when ε changes.
        """
        if not self.crafts_adversarial or eps == self.training_eps:
            return
        full = self.attack_params.get("eps")
        if full is None:
            raise ValueError("set_training_eps needs attack_params with eps")
        if not 0 <= eps <= full:
            raise ValueError(f"training eps must be in [0, {full}], received eps={eps}")
        params = dict(self.attack_params, eps=float(eps))
        if params.get("step_size") is not None and full > 0:
            params["step_size"] = params["step_size"] * eps / full
        self._train_attack_fn, _ = _bind_attack(self.classifier, self.attack, params)
        self.training_eps = float(eps)
        self.train_function = None  # Keras traces the step again at the next fit.

    def generate_adversarial(self, x, y, training=False):
        """Crafts `x_adv` against the current weights (classifier in inference mode).

        `training=True`: with the step's attack (at `training_eps`), else at the full ε.
        """

        def model_fn(z):
            return tf.cast(self._attack_target(z, training=False), tf.float32)

        attack_fn = self._train_attack_fn if training else self._attack_fn
        return tf.stop_gradient(attack_fn(model_fn, x, y))

    def _forward(self, x, training):
        """`(logits, triplet features)` of one forward pass, both float32."""
        if self._forward_fn is None:
            logits = tf.cast(self.classifier(x, training=training), tf.float32)
            return logits, logits
        logits, features = self._forward_fn(x, training=training)
        return tf.cast(logits, tf.float32), tf.cast(features, tf.float32)

    def _compute_losses(self, data, training):
        """Returns the replica's share of the loss (objective + triplet term) and metric inputs."""
        x, y = tf.cast(data[0], tf.float32), tf.cast(data[1], tf.int32)
        local_k = tf.cast(tf.shape(y)[0], tf.float32)
        replica_ctx = tf.distribute.get_replica_context()
        global_k = replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_k)
        num_replicas = tf.cast(replica_ctx.num_replicas_in_sync, tf.float32)

        logits, features = self._forward(x, training)
        out = {"y": y, "logits": logits, "local_k": local_k}
        adv_logits = adv_features = None
        if self.crafts_adversarial:
            if len(data) == 3:  # Precomputed x_adv (ensemble AT²L, Algorithm 2).
                x_adv = tf.stop_gradient(tf.cast(data[2], x.dtype))
            else:
                x_adv = self.generate_adversarial(x, y, training=training)
            adv_logits, adv_features = self._forward(x_adv, training)
            out["adv_logits"] = adv_logits
        total = tf.reduce_sum(self.objective.per_example_loss(y, logits, adv_logits)) / global_k
        if self.uses_triplet:
            # The layer adds λ2/k Σ h_i to its `losses` via add_loss.
            out["hinge"] = self.triplet(y, features, adv_features, global_k, adv_logits=adv_logits)
            total += tf.add_n(self.triplet.losses)
        # Weight regularisers of the classifier are per model, not per example:
        # each replica contributes 1/num_replicas of them.
        reg = self.classifier.losses
        if reg:
            total += tf.add_n([tf.cast(r, tf.float32) for r in reg]) / num_replicas
        # Per-replica mean of the loss, for the tracker (weighted by local_k).
        out["loss_local_mean"] = total * global_k / local_k
        return total, out

    def _update_metrics(self, out):
        k = out["local_k"]
        self.loss_tracker.update_state(out["loss_local_mean"], sample_weight=k)
        self.ce_clean_tracker.update_state(losses.cross_entropy(out["y"], out["logits"]))
        self.acc_metric.update_state(out["y"], out["logits"])
        if self.crafts_adversarial:
            self.ce_adv_tracker.update_state(losses.cross_entropy(out["y"], out["adv_logits"]))
            self.adv_acc_metric.update_state(out["y"], out["adv_logits"])
        if self.uses_triplet:
            self.triplet_tracker.update_state(out["hinge"])
        if self.multi_worker_workarounds:
            # Keras reduces each step output with strategy.reduce(MEAN, v, axis=0),
            # which fails on scalars with two workers (keras-team/keras#20585):
            # shape (1,) reduces to the scalar mean over replicas it expected.
            return {m.name: tf.reshape(m.result(), [1]) for m in self.metrics}
        return {m.name: m.result() for m in self.metrics}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 (TF backend) takes one batch before `fit` and reduces it over
        # replicas to learn the input shapes, which fails with two workers
        # (`strategy.reduce` of a (x, y) tuple of PerReplica values). The model
        # is built at construction and its optimizer before `fit` (see
        # `training.distribute`), so there is nothing to learn: skip it then.
        if self.multi_worker_workarounds and self.built and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        weights = self.classifier.trainable_weights
        saved = None
        if self.awp_gamma > 0:
            data, saved = self._perturb_weights(data)
        with tf.GradientTape() as tape:
            total, out = self._compute_losses(data, training=True)
            scaled = self.optimizer.scale_loss(total)  # Mixed-precision loss scaling.
        grads = tape.gradient(scaled, weights)
        if saved is not None:
            awp_lib.restore(awp_lib.perturbed_weights(weights), saved)
        self.optimizer.apply(grads, weights)
        if self.weight_average is not None:
            self.weight_average.update(self.optimizer.iterations)
        return self._update_metrics(out)

    def _perturb_weights(self, data):
        """AWP (`training.awp`): crafts x' at w, moves the kernels to w + v.

        Returns the batch with x' (so the update's loss uses the same x') and
        the kernels' saved values.
        """
        x, y = tf.cast(data[0], tf.float32), tf.cast(data[1], tf.int32)
        if self.crafts_adversarial and len(data) < 3:
            data = (x, y, self.generate_adversarial(x, y, training=True))
        kernels = awp_lib.perturbed_weights(self.classifier.trainable_weights)
        with tf.GradientTape() as tape:
            total, _ = self._compute_losses(data, training=True)
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, kernels)
        on = tf.cast(self.optimizer.iterations >= self.awp_start_step, tf.float32)
        return data, awp_lib.perturb(kernels, grads, self.awp_gamma * on)

    def test_step(self, data):
        _, out = self._compute_losses(data, training=False)
        return self._update_metrics(out)

    def get_config(self):
        return {
            **super().get_config(),
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "objective": self.objective_name,
            "attack": self.attack,
            "attack_params": self.attack_params,
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "margin": self.margin,
            "triplet_distance": self.triplet.distance,
            "seed": self.seed,
            "beta": self.beta,
            "triplet_features": self.triplet.features,
            "triplet_negative": self.triplet.negative,
            "ema": self.ema,
            "awp_gamma": self.awp_gamma,
            "awp_start_step": self.awp_start_step,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"))
        # A config written before the rename names `objective` and `triplet_distance` as
        # `TrainConfig` did then: `defense` and `norm`.
        return cls(classifier, **identity.renamed(config, "train"))


def _untracked_call(model):
    """`fn(x, training)` calling `model`, which Keras then does not track as a sub-layer."""

    def call(x, training=False):
        return model(x, training=training)

    return call


def _bind_attack(classifier, attack, params):
    """`(attack_fn, target)`: the bound attack and the model it differentiates.

    Attacks on images target the whole classifier (defence layer included);
    LS-PGA targets the network behind the classifier's thermometer encoding,
    with the encoding's levels.
    """
    entry = attacks.get_entry(attack)
    if entry.inputs == "images":
        return attacks.make_attack(attack, **params), classifier
    layer, net = defenses.split(classifier)
    if not isinstance(layer, defenses.ThermometerEncoding):
        raise ValueError(
            f"attack {attack!r} needs a classifier behind a thermometer encoding "
            f"(preprocessing='thermometer'), received {classifier.name!r}"
        )
    return attacks.make_attack(attack, levels=layer.levels, **params), net
