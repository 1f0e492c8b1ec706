"""KerasTuner hypermodel of AT²L: λ1, λ2, α and the triplet distance as hyperparameters,
and optionally the objective, β, and the triplet's features and negatives.

The loss being tuned (Eq. 1 and 2 of the paper):

    L = 1/((1+λ1) k) · Σ [CE(x_i, y_i) + λ1 · CE(x_adv_i, y_i)]
      + λ2/k · Σ max( d(f(x_adv_i), f(x_i)) − d(f(x_adv_i), f(x_n_i)) + α, 0 )

`AT2LHyperModel` wraps the existing builder (`experiment.build_model`): every
trial is the base `ExperimentConfig` with λ1 (`lambda1`), λ2 (`lambda2`), α
(`margin`) and the distance `d` (`triplet_distance`) substituted, trained on the base
config's data and budget (`epochs`, `max_train_examples`) with the base seed,
so that every trial sees the same initial weights and the same data order.

The search may also cover the objective itself (`SearchSpace.objectives`, e.g.
`at, at2l, trades, mart`), TRADES' / MART's β (`beta_range`), and the triplet
term's features (`logits | embedding`) and negatives (`random | hardest`);
by default it does not (the base config's values are kept). A trial only
takes the values its objective uses (`used_by`): an `at` trial of a search
that also covers `at2l` keeps the base λ2, so it stays plain AT.

The objective is **not** the training attack's accuracy (`val_adv_acc`): a
defence that masks gradients, or fits its own attack, scores well there and
badly under anything stronger (README: FGSM-RS training). `RobustAccuracy`
measures, after every epoch, the accuracy under a stronger attack (APGD-CE by
default) on the first N validation images and logs it as `val_robust_acc`,
which the tuner maximises (`objective()`; KerasTuner takes a trial's value
from its best epoch).

KerasTuner runs only `build` under its distribution strategy, and deep-copies
the callbacks passed to `search` once per execution; `fit` therefore makes
its own `RobustAccuracy` for every run (and the callback deep-copies itself
into a fresh one anyway).
"""

import dataclasses
import functools

import keras
import keras_tuner

from at2l_tf import data, defenses, evaluation, experiment, identity, precision
from at2l_tf.tune.space import OBJECTIVE_METRIC, trial_values, used_by

class RobustAccuracy(keras.callbacks.Callback):
    """Logs the accuracy under a (strong) attack at the end of every epoch.

    The number is the share of `dataset`'s first `num_examples` images that
    the model classifies correctly both clean and after the attack
    (`evaluation.robustness_report`'s `robust_accuracy`), written into the
    epoch's `logs` as `name` (default `val_robust_acc`), so that History,
    the progress line, KerasTuner and `SaveBestEpoch` all see it. It must
    come *before* those callbacks in the list (Keras appends History and the
    progress bar last).

    The attack runs on the classifier in inference mode (`training=False`).
    Behind a defence layer, gradient attacks go through the layer's adaptive
    attack (BPDA for the thermometer code, EOT for random resizing), as in
    the train command's final check.

    Args:
        dataset: batched `(images, labels)`; the images to attack.
        attack: an `evaluation.AttackSpec` (its `params` include `eps`).
        num_examples: how many of `dataset`'s examples to use; default all.
        name: the key in `logs`; a `val_` prefix marks it as a validation metric.
    """

    def __init__(self, dataset, attack, *, num_examples=None, name=OBJECTIVE_METRIC):
        super().__init__()
        self.dataset = dataset
        self.attack = attack
        self.num_examples = num_examples
        self.name = name
        self.last_report = None
        self._model_fn = self._specs = None
        self._trained = self._twin = None

    def __deepcopy__(self, memo):
        # KerasTuner deep-copies callbacks per execution; a tf.data pipeline
        # cannot be deep-copied, and it is read-only: share it, reset the rest.
        return type(self)(self.dataset, self.attack, num_examples=self.num_examples, name=self.name)

    def on_train_begin(self, logs=None):
        classifier = getattr(self.model, "classifier", self.model)
        # Robustness is judged in float32: a mixed-precision classifier gets a
        # float32 twin, whose weights follow it at every epoch end.
        self._trained = classifier
        self._twin = precision.to_float32(classifier)
        # One model_fn per fit, so that compiled attacks trace once per trial.
        layer, self._model_fn, net_fn = defenses.compose.inference_fns(self._twin)
        self._specs = evaluation.adaptive.adapt(
            [self.attack], layer=layer, net_fn=net_fn, model_fn=self._model_fn
        )

    def on_epoch_end(self, epoch, logs=None):
        if self._model_fn is None:
            self.on_train_begin()
        if self._twin is not self._trained:
            self._twin.set_weights(self._trained.get_weights())
        report = evaluation.robustness_report(
            self._model_fn, self.dataset, self._specs, num_examples=self.num_examples, verbose=0
        )
        self.last_report = report
        if logs is not None:
            logs[self.name] = report["robust_accuracy"]


class AT2LHyperModel(keras_tuner.HyperModel):
    """Builds and trains one AT²L configuration per trial.

    Hyperparameters (named as the `TrainConfig` fields and the train flags):
    `objective` (choice), `lambda1` (λ1, uniform), `lambda2` (λ2,
    log-uniform), `margin` (α, log-uniform), `triplet_distance` (choice),
    `beta` (β, log-uniform), `triplet_features` and `triplet_negative`
    (choices), each only if an objective of the search uses it (`used_by`) and
    its range is given; a range with min == max is a fixed value. A search
    started before the rename keeps, in its KerasTuner state, `defense` and
    `norm` for `objective` and `triplet_distance`: `declare` declares them
    under those names there, and `trial_values` reads them back as the new.

    Execution j of a trial (`executions_per_trial`) uses seed `base seed + j`:
    every trial sees the same initial weights, data order and negatives as
    every other (a fair comparison), and several executions average over the
    same seeds for all trials.

    Args:
        base_config: the validated `ExperimentConfig` every trial starts from;
            its `epochs` and `max_train_examples` are the per-trial budget.
        space: a `SearchSpace`.
        objective_attack: an `ObjectiveAttack`.
        verbose: Keras verbosity of each trial's `fit` (2: one line per epoch).
        name: the hypermodel's name.
    """

    def __init__(self, base_config, space, objective_attack, *, verbose=2, name="at2l"):
        super().__init__(name=name)
        self.base_config = base_config
        self.space = space
        self.objective_attack = objective_attack
        self.verbose = verbose
        self.tuned = space.tuned(base_config.train.objective, base_config.train.lambda2)
        self._last_hp = None
        self._execution = 0
        self._config = None
        self._steps_per_epoch = None
        self._objective_ds = None
        # Decided once for the whole search (the tune command says it first).
        self.precision = experiment.resolve_precision(base_config)

    def declare(self, hp):
        """Declares the tuned hyperparameters in `hp`; returns `{name: value}`."""
        s = self.space
        values = {}
        choices = {"objective": s.objectives, "triplet_distance": s.triplet_distances,
                   "triplet_features": s.triplet_features, "triplet_negative": s.triplet_negatives}
        for name in self.tuned:
            declared = _declared_name(hp, name)
            if name in choices:
                options = tuple(dict.fromkeys(choices[name]))
                values[name] = (
                    hp.Fixed(declared, options[0]) if len(options) == 1 else hp.Choice(declared, options)
                )
                continue
            low, high = getattr(s, f"{name}_range")
            if low == high:
                values[name] = hp.Fixed(declared, float(low))
            else:
                sampling = "linear" if name == "lambda1" else "log"
                values[name] = hp.Float(declared, float(low), float(high), sampling=sampling)
        return values

    def config_for(self, values, execution=0):
        """The base config with `values` and seed `base + execution`.

        Only the values the trial's objective uses are taken (`used_by`); β and
        the triplet's features and negatives go back to their defaults for an
        objective that does not use them.
        """
        base = self.base_config.train
        objective = values.get("objective", base.objective)
        used = used_by(objective, base.lambda2)
        own = {k: v for k, v in values.items() if k in used}
        reset = {}
        if objective != base.objective:
            defaults = type(base)()
            reset = {n: getattr(defaults, n) for n in ("beta", "triplet_features", "triplet_negative")
                     if n not in used}
        train = dataclasses.replace(
            base, objective=objective, **reset, **own, seed=base.seed + execution
        )
        return dataclasses.replace(self.base_config, train=train)

    def build(self, hp):
        """Builds and compiles the `AT2LModel` of this trial (under the tuner's strategy)."""
        values = self.declare(hp)
        # KerasTuner builds once per execution with the trial's own `hp` object.
        self._execution = self._execution + 1 if hp is self._last_hp else 0
        self._last_hp = hp
        self._config = self.config_for(values, self._execution)
        keras.utils.set_random_seed(self._config.train.seed)
        return experiment.build_model(
            self._config, steps_per_epoch=self._steps(self._config), precision=self.precision
        )

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        """Trains `model` on the base config's data and returns the `History`.

        The data come from the base config, not from `search`'s arguments
        (positional ones are refused). `epochs`/`initial_epoch` (set by
        Hyperband) default to the config's epochs and 0; `verbose` from
        `search` is the tuner's display, not fit's.
        """
        if args:
            raise ValueError(
                "AT2LHyperModel.fit takes its data from the base config; "
                f"received {len(args)} positional argument(s) from search()"
            )
        kwargs.pop("verbose", None)
        config = self._config if self._config is not None else self.config_for(trial_values(hp.values))
        keras.utils.set_random_seed(config.train.seed)  # Same data order in every trial.
        train_ds, val_ds = experiment.load_datasets(config)
        robust = RobustAccuracy(
            self.objective_dataset(),
            self.objective_attack.spec(config.eps),
            num_examples=self.objective_attack.num_examples,
        )
        end = epochs or config.train.epochs
        fit = functools.partial(
            model.fit, train_ds, validation_data=val_ds, callbacks=[robust, *(callbacks or [])],
            verbose=self.verbose, shuffle=False, **kwargs,
        )
        # An ε warm-up (MART's default) as `train` runs it: the training attack's ε
        # of each warm-up epoch is fixed in its compiled step, so those epochs are
        # fitted one at a time; the rest at the full ε in one call.
        ramp = min(config.train.eps_warmup, end)
        histories = []
        for e in range(initial_epoch, ramp):
            model.set_training_eps(experiment.training_eps(config, e))
            histories.append(fit(epochs=e + 1, initial_epoch=e))
        if max(initial_epoch, ramp) < end or not histories:
            model.set_training_eps(config.eps)
            histories.append(fit(epochs=end, initial_epoch=max(initial_epoch, ramp)))
        return _joined(histories)

    def objective_dataset(self):
        """The first `objective_attack.num_examples` validation images, batched (cached)."""
        if self._objective_ds is None:
            self._objective_ds = data.make_pipeline(
                experiment.load_split(
                    self.base_config, "validation", self.objective_attack.num_examples
                ),
                batch_size=max(self.base_config.data.batch_size, 256),
            )
        return self._objective_ds

    def _steps(self, config):
        # Only a learning-rate schedule needs the steps per epoch.
        if config.train.lr_schedule == "constant":
            return None
        if self._steps_per_epoch is None:
            train_ds, _ = experiment.load_datasets(config)
            self._steps_per_epoch = int(train_ds.cardinality())
        return self._steps_per_epoch if self._steps_per_epoch > 0 else None


def _declared_name(hp, name):
    """The name under which `hp` holds `name`: its old one (`identity.RENAMED_SETTINGS`) in a
    search started before the rename, whose KerasTuner state declared it so."""
    old = next((o for o, new in identity.RENAMED_SETTINGS.items() if new == name), None)
    return old if old is not None and old in hp.values else name


def _joined(histories):
    """One `History` of consecutive `fit` calls (what the tuner reads per epoch)."""
    joined = histories[-1]
    if len(histories) > 1:
        joined.epoch = [e for h in histories for e in h.epoch]
        joined.history = {k: [v for h in histories for v in h.history.get(k, [])] for k in joined.history}
    return joined


__all__ = ["AT2LHyperModel", "RobustAccuracy"]
