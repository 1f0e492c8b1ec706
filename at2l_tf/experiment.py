"""One training run from an `ExperimentConfig`, in phases that run one way:

    config -> strategy -> workdir -> data -> model -> fit -> finish (chief only)

1. **strategy** (`training.distribute.make_strategy`): first, because
   MultiWorkerMirroredStrategy must exist before any other TensorFlow op;
   the training precision (`at2l_tf.precision`) is decided here, once, and
   said on the run's first line;
2. **workdir** (`training.backup.open_workdir`): the resume rules — refuse a
   workdir of another configuration, find this worker's backup;
3. **data** (`training_data`): this worker's shard, in an order that is a
   function of (seed, epoch), so that a resume can skip what was trained on;
4. **model** (`build_model`), then the backup is loaded into it;
5. **fit** (`fit`): clean pre-training (line 1 of Algorithms 1, 2), then
   Algorithm 1 (`AT2LModel` crafts `x_adv` in its step) or Algorithm 2
   (`training.ensemble`), one `model.fit` call per epoch, with backups;
6. **finish** (`finish`, chief only): `model.keras`, the test-split
   robustness check, the SavedModel export, `results.json`; then the backups
   and the other workers' temporary files are removed. All three use a float32
   copy of the classifier (`precision.to_float32`), whatever precision trained it.

Outputs, all under `config.workdir` unless noted:

* `checkpoints/epoch-NN.weights.h5`: weights after every epoch;
* `logs/`: TensorBoard logs (losses, accuracies, triplet term per epoch);
* `backup/<task>-<index>/state.npz`: the backup of an unfinished run;
* `model.keras`: the trained classifier (images -> logits);
* `results.json`: the configuration, what it trains with (`"training"`: the
  objective, its loss with λ1 / β, and the triplet term's features, distance,
  negative, λ2, α, or null), the training history, the resumes, the training
  time (`train_seconds`, all sittings of a resumed run) and the final
  test-split table (clean, FGSM, PGD accuracy with eps, steps and sample size);
* `<export_dir>/<version>/`: the SavedModel for TF Serving (if `export_dir`), with
  the final check's robustness record in `assets/robustness.json`.
"""

import dataclasses
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from at2l_tf import config as config_lib
from at2l_tf import data, defenses, evaluation, fileio, models, savedmodel
from at2l_tf import precision as precision_lib
from at2l_tf.log import log
from at2l_tf.training import backup as backup_lib
from at2l_tf.training import distribute, ensemble
from at2l_tf.training.at2l_model import AT2LModel
from at2l_tf.training.epoch_progbar import EpochProgbarLogger
from at2l_tf.training.weight_average import SwapForValidation
from at2l_tf.training.time_estimate import TimeEstimate

def learning_rate(config, steps_per_epoch=None):
    """The optimizer's learning rate: a float, or a Keras schedule.

    `cosine` is `keras.optimizers.schedules.CosineDecay` from
    `config.train.learning_rate` to 0 over `epochs * steps_per_epoch` steps.
    """
    t = config.train
    if t.lr_schedule == "constant":
        return t.learning_rate
    if not steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(
            f"lr_schedule={t.lr_schedule!r} needs the number of steps per epoch, "
            f"received steps_per_epoch={steps_per_epoch}"
        )
    return keras.optimizers.schedules.CosineDecay(t.learning_rate, t.epochs * steps_per_epoch)


def training_eps(config, epoch):
    """The training attack's ε in adversarial epoch `epoch` (0-based, after pre-training).

    With an ε warm-up of N epochs (`TrainConfig.eps_warmup`), epoch e < N trains
    at `eps · (e + ½) / N` — the mean over the epoch of the linear ramp from 0 at
    the start of training to `eps` at the end of epoch N − 1 — and later epochs
    at `eps`. Per epoch, not per step: the attacks take ε as a Python number,
    fixed in the compiled step, and the run compiles one step per `fit` call,
    i.e. per epoch. The ε of an epoch depends on its index only, which the
    backup records, so a run resumed mid-ramp trains at the same ε.
    """
    n = config.train.eps_warmup
    if n <= 0 or epoch >= n:
        return config.eps
    return config.eps * (epoch + 0.5) / n


def resolve_precision(config, hardware=None):
    """The `precision.Precision` that `config.train.mixed_precision` means on this
    machine (or on `hardware`)."""
    return precision_lib.resolve(config.train.mixed_precision, hardware)


def build_model(config, strategy=None, steps_per_epoch=None, precision=None):
    """Builds and compiles the `AT2LModel` of `config` (under `strategy`'s scope).

    `steps_per_epoch` is needed by learning-rate schedules and AWP's warm-up
    (`awp_warmup_epochs` × steps per epoch optimizer steps) only. `precision`
    (a `precision.Precision`; default: resolved from the config) decides the
    dtype policy of the network; the wrapper, its metrics and the defence
    layer stay float32, and float16 gets a `LossScaleOptimizer`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    precision = precision or resolve_precision(config)
    with strategy.scope():
        classifier = build_classifier(config, precision.policy)
        params = config.attack.params()
        params["eps"] = config.eps
        model = AT2LModel(
            classifier,
            objective=config.train.objective,
            attack=config.attack.name,
            attack_params=params,
            lambda1=config.train.lambda1,
            lambda2=config.train.lambda2,
            margin=config.train.margin,
            triplet_distance=config.train.triplet_distance,
            beta=config.train.beta,
            triplet_features=config.train.triplet_features,
            triplet_negative=config.train.triplet_negative,
            seed=config.train.seed,
            ema=config.train.ema,
            awp_gamma=config.train.awp_gamma,
            awp_start_step=_awp_start_step(config, steps_per_epoch),
        )
        optimizer = keras.optimizers.Adam(learning_rate(config, steps_per_epoch))
        model.compile(optimizer=precision_lib.wrap_optimizer(optimizer, precision))
    return model


def _awp_start_step(config, steps_per_epoch):
    t = config.train
    if t.awp_gamma <= 0 or t.awp_warmup_epochs == 0:
        return 0
    if not steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(
            f"awp_warmup_epochs={t.awp_warmup_epochs} needs the number of steps per epoch, "
            f"received steps_per_epoch={steps_per_epoch}"
        )
    return t.awp_warmup_epochs * steps_per_epoch


def build_classifier(config, policy="float32"):
    """The classifier of `config` as trained: its defence layer (if any) in front of the network.

    The network is built for the layer's output (e.g. `C·levels` channels after
    a thermometer encoding, the padded size after random resizing). Test-time
    layers (Defense-GAN's projection, `defenses.compose.TEST_TIME_ONLY`) are not
    trained through: `finish` puts them in front of the trained network.
    Only the network is built under `policy` (a Keras dtype policy name); the
    defence layer computes in float32 (its numerics are the defence).
    """
    spec = config.spec
    layer = None
    if config.preprocessing.name not in defenses.compose.TEST_TIME_ONLY:
        layer = defenses.compose.layer_from_config(config.preprocessing, spec.image_shape, config.train.seed)
    net_shape = spec.image_shape if layer is None else layer.compute_output_shape((None,) + spec.image_shape)[1:]
    with precision_lib.policy_scope(policy):
        net = models.get_model(config.model_name, input_shape=net_shape, num_classes=spec.num_classes)
    return defenses.defended_model(layer, net, spec.image_shape)


def test_time_layer(config):
    """The built test-time defence layer of `config` (Defense-GAN's projection).

    Raises:
        ConfigError / ModelLoadError: a generator that is missing, unreadable,
            or makes images of another shape than the dataset's.
    """
    shape = config.spec.image_shape
    layer = defenses.compose.layer_from_config(config.preprocessing, shape, config.train.seed)
    layer.build((None,) + tuple(shape))
    return layer


def load_split(config, split, max_examples=None, cache=False):
    """`data.load` of one split of `config`'s dataset (unbatched), with its
    data directory, validation size and image size (`cache`: of uint8 images)."""
    d = config.data
    return data.load(
        d.dataset,
        split,
        data_dir=d.data_dir,
        validation_size=d.validation_size,
        image_size=d.image_size,
        max_examples=max_examples,
        image_dir=d.image_dir,
        cache=cache,
    )


def load_datasets(config):
    """Returns `(train, validation)` pipelines of `config` (one process, reshuffled each epoch)."""
    d = config.data
    train = data.make_pipeline(
        load_split(config, "train", d.max_train_examples),
        batch_size=d.batch_size,
        shuffle=True,
        seed=config.train.seed,
        drop_remainder=True,
    )
    val = None
    if d.validation_size > 0:
        val = data.make_pipeline(load_split(config, "validation"), batch_size=d.batch_size)
    return train, val


@dataclasses.dataclass
class TrainingData:
    """This worker's training examples and validation batches.

    Attributes:
        examples: the worker's shard of the training split, unbatched and cached.
        batch_size: examples per batch of one pipeline element (the global
            batch for one worker; one replica's share under multi-worker).
        steps: steps per epoch (the same on every worker).
        seed: the run's seed.
        validation: batched validation data (distributed per worker under
            multi-worker), or None.
    """

    examples: tf.data.Dataset
    batch_size: int
    steps: int
    seed: int
    validation: object = None
    strategy: object = None
    elements_per_step: int = 1

    def epoch(self, epoch, skip=0):
        """The batches of `epoch` (0-based, over the whole run), the first `skip` steps left out.

        The order is a function of (seed, epoch) only, not of how many epochs
        this process has already iterated, so a resumed run sees the same
        batches as an uninterrupted one.
        """
        ds = self.examples.shuffle(
            _SHUFFLE_BUFFER, seed=self.seed * 1_000_003 + epoch, reshuffle_each_iteration=False
        )
        ds = ds.batch(self.batch_size, drop_remainder=True)
        ds = ds.skip(skip * self.elements_per_step).prefetch(tf.data.AUTOTUNE)
        if self.strategy is not None:
            return distribute.distribute_per_worker(self.strategy, ds)
        return ds


_SHUFFLE_BUFFER = 10000


def training_data(config, strategy, worker):
    """The `TrainingData` of `config` for this worker (its own shard under multi-worker)."""
    d = config.data
    # Cached as uint8 images, before the float conversion (a quarter of the memory).
    examples = load_split(config, "train", d.max_train_examples, cache=True)
    val = load_split(config, "validation") if d.validation_size > 0 else None
    if worker.num_workers == 1:
        n = _count(examples)
        if n < d.batch_size:
            raise config_lib.ConfigError(
                f"the training split has {n} examples, fewer than batch_size={d.batch_size}"
            )
        if val is not None:
            val = data.make_pipeline(val, batch_size=d.batch_size)
        return TrainingData(examples, d.batch_size, n // d.batch_size, config.train.seed, val)
    # Multi-worker: each worker reads its shard, batched per replica (no rebatching).
    replicas = strategy.num_replicas_in_sync
    local = max(replicas // worker.num_workers, 1)
    per_replica = d.batch_size // replicas
    examples = distribute.shard_for_worker(examples, worker)
    steps = _count(examples) // (per_replica * local)
    if steps < 1:
        raise config_lib.ConfigError(
            f"each of {worker.num_workers} workers gets fewer than one batch: use more "
            f"training examples or a smaller batch_size (received batch_size={d.batch_size})"
        )
    if val is not None:
        val = distribute.shard_for_worker(val, worker)
        n_val = _count(val) // local * local
        val = distribute.distribute_per_worker(
            strategy, data.make_pipeline(val.take(n_val), batch_size=per_replica)
        )
    return TrainingData(
        examples, per_replica, steps, config.train.seed, val, strategy=strategy, elements_per_step=local
    )


def _count(ds):
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
    return n


def final_attack_specs(config):
    """The test-split check: clean + each of `config.eval.attacks` at the training eps.

    By default FGSM, PGD-40 (step 0.01, the figure the project used to report,
    kept for comparison) and AutoAttack `fast` (APGD-CE + APGD-T), whose worst
    case per example is the run's `robust_accuracy`.
    """
    specs = []
    for name in config.eval.attacks:
        params = {"eps": config.eps}
        if name == "pgd":  # Other iterative attacks keep their own defaults, as in evaluate.
            params.update(steps=config.eval.pgd_steps, step_size=config.eval.pgd_step_size)
        if name == "autoattack":
            params.update(version=config.eval.autoattack_version)
        specs.append(evaluation.AttackSpec(name, params))
    return specs


def default_verbosity():
    """A progress bar on a terminal; one line per epoch when output goes to a file."""
    return 1 if sys.stdout.isatty() and sys.stderr.isatty() else 2


def run(config, *, verbose=None):
    """Trains (or resumes), evaluates on the test split and exports, as `config` says.

    Args:
        config: a validated-or-not `ExperimentConfig` (it is validated first).
        verbose: Keras verbosity of `fit` (0 silent, 1 progress bar, 2 one line
            per epoch); `None`: 1 on a terminal, else 2.

    Returns:
        The results dict also written to `<workdir>/results.json` (on the
        chief; other workers return theirs without writing it).

    Raises:
        ConfigError: a bad setting, a malformed `TF_CONFIG`, a workdir holding
            another configuration or one that cannot be written.
        backup.Interrupted: Ctrl-C; a backup was written and the same call resumes.
    """
    config.validate()
    # 1. Strategy, before any other TensorFlow op.
    worker = distribute.worker_from_env(config.train.strategy)
    if config.ensemble.attacks and worker.num_workers > 1:
        raise config_lib.ConfigError(
            "ensemble training (Algorithm 2) runs on one worker (its adversarial sets are "
            f"crafted in memory), received {worker.num_workers} workers in TF_CONFIG"
        )
    strategy = distribute.make_strategy(config.train.strategy)
    hardware = precision_lib.detect_hardware()  # Read once: the policy, the backups, the record.
    precision = resolve_precision(config, hardware)  # Decided once: the run's first line says it.
    log(precision.describe())
    if precision.warning:
        log(f"warning: {precision.warning}")
    distribute.check_batch_size(config.data.batch_size, strategy.num_replicas_in_sync)
    verbose = default_verbosity() if verbose is None else verbose
    started = time.time()
    # 2. Workdir: the resume rules.
    defaults = config_lib.ExperimentConfig().to_dict()
    backup = backup_lib.open_workdir(
        config.workdir, worker, backup_lib.identity(config.to_dict(), defaults), defaults
    )
    backup.check_precision(precision.policy, hardware.cpu_model)
    keras.utils.set_random_seed(config.train.seed)
    static_models = ()
    if config.ensemble.attacks:  # Before anything is trained: a bad model fails here.
        static_models = ensemble.load_static_models(
            config.ensemble.static_models, config.spec.image_shape, config.spec.num_classes
        )
    if config.preprocessing.name in defenses.compose.TEST_TIME_ONLY:
        test_time_layer(config)  # A missing or wrong-shaped generator fails before training.
    # 3. Data, 4. model.
    train_data = training_data(config, strategy, worker)
    model = build_model(config, strategy, steps_per_epoch=train_data.steps, precision=precision)
    log(
        f"training {config.model_name} on {config.data.dataset} with {_describe_training(config.train)}"
        f"attack={config.training_attack or 'none'} eps={config.eps:.4g} steps={config.attack.steps} "
        f"preprocessing={config.preprocessing.name} "
        f"replicas={strategy.num_replicas_in_sync}"
        + (f" worker={worker.name} of {worker.num_workers}" if worker.num_workers > 1 else "")
    )
    # 5. Fit.
    scratch = None if worker.is_chief else tempfile.mkdtemp(prefix=f"at2l-{worker.name}-")
    try:
        record = fit(model, config, train_data, backup, strategy, worker, static_models, verbose, scratch)
        if model.weight_average is not None:
            # The run returns the averaged weights: model.keras, the check, the export.
            model.weight_average.finalize()
            record["weights"] = f"exponential moving average, decay {config.train.ema:g} per step"
        # Earlier sittings' time (from the backup) plus this one's.
        record["train_seconds"] = round(record.pop("seconds_before") + time.time() - started, 1)
        record["weights_sha256"] = distribute.weights_digest(model.classifier)
        record["precision"] = precision_lib.summary_line(precision, hardware)
        log(f"{worker.name}: weights sha256 {record['weights_sha256'][:16]}")
        # 6. Finish.
        if not worker.is_chief:
            backup.remove()
            return record
        return finish(model, config, record, backup, worker, started, verbose)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def fit(model, config, train_data, backup, strategy, worker, static_models, verbose, scratch=None):
    """Phase 5: pre-training and training from the backup's position, with backups.

    Returns:
        `{"history", "seconds_before" (earlier sittings' training time), "pretrain_history"
        (if any), "resumed" (if any), "ensemble" (if any)}`.
    """
    out_dir = scratch or config.workdir  # Other workers' summaries go to a scratch directory.
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            os.path.join(out_dir, "checkpoints", "epoch-{epoch:02d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs")),
    ]
    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    pre, total = config.train.pretrain_epochs, config.train.pretrain_epochs + config.train.epochs
    callbacks.append(EpochProgbarLogger(total))  # `Epoch k/total` from one fit call per epoch.
    # The adversarial phase's own: val_* on the weight average (pre-training does
    # not update it), and history["train_eps"], the ε warm-up as trained.
    adversarial_callbacks = [*callbacks]
    if model.weight_average is not None:
        adversarial_callbacks.append(SwapForValidation(model.weight_average))
    if config.train.eps_warmup:
        adversarial_callbacks.append(_TrainingEpsLogger())
    epoch, step = backup.position
    meta = backup.meta or {}
    run_state = {
        "history": meta.get("history", {}),
        "pretrain_history": meta.get("pretrain_history", {}),
        "resumes": list(meta.get("resumes", [])),
        "seconds_before": float(meta.get("train_seconds", 0.0)),  # Earlier sittings' training time.
        "clock": time.monotonic(),
    }
    if config.ensemble.attacks and pre <= epoch < total and step:
        step = 0  # Algorithm 2 resumes at the start of the interrupted epoch (see training.backup).
    if backup.meta:
        run_state["resumes"].append({"epoch": epoch, "step": step, "steps_per_epoch": train_data.steps,
                                     "backup_written": meta.get("written"),
                                     "train_seconds_before": run_state["seconds_before"],
                                     # A run may span CPUs: the previous sitting's and this one's.
                                     "backup_cpu_model": meta.get("cpu_model"),
                                     "cpu_model": backup.cpu_model})
        log(f"resuming from {backup.path}: {epoch} epoch(s) and {step} step(s) done of {total} epoch(s)")
    stop = backup_lib.StopFlag()

    def backup_callback(phase, epoch0, step0, mid_epoch=True):
        return backup_lib.BackupCallback(
            backup, run_state, epoch=epoch0, first_step=step0, phase=phase,
            save_every_steps=config.train.save_every_steps if mid_epoch else 0,
            stop_flag=stop, mid_epoch=mid_epoch,
        )

    extra = {}
    with stop.on_sigint():
        if epoch < pre:
            log(f"pre-training on clean data for {pre} epoch(s) (line 1 of Algorithms 1 and 2)")
            with strategy.scope():
                clean = AT2LModel(model.classifier, objective="none", seed=config.train.seed)
                clean.compile(optimizer=precision_lib.wrap_optimizer(
                    keras.optimizers.Adam(config.train.learning_rate), backup.precision))
            backup.restore(clean, "pretrain", strategy)
            distribute.prepare_for_workers(clean, strategy, worker)
            _fit_epochs(clean, train_data, epoch, step, pre, callbacks, verbose,
                        backup_callback("pretrain", epoch, step), stop, backup)
            epoch, step = pre, 0
        else:
            backup.restore(model, "train", strategy)
        distribute.prepare_for_workers(model, strategy, worker)
        if epoch < total and config.ensemble.attacks:
            cb = backup_callback("train", epoch, 0, mid_epoch=False)
            extra["ensemble"] = _fit_ensemble(
                model, config, static_models, train_data, [*adversarial_callbacks, cb], verbose,
                start_epoch=epoch
            )
            extra["ensemble"].pop("history")
            _check_stopped(cb, backup)
        elif epoch < total:
            # "epoch 1: ~X s/step, ~Y min per epoch, ~Z min for N epochs" after the first steps.
            estimate = [TimeEstimate(train_data.steps, total - epoch, first_epoch=epoch)] if verbose else []
            _fit_epochs(model, train_data, epoch, step, total, [*adversarial_callbacks, *estimate], verbose,
                        backup_callback("train", epoch, step), stop, backup,
                        eps_of_epoch=lambda e: training_eps(config, e - pre))
    record = {"history": run_state["history"], "seconds_before": run_state["seconds_before"], **extra}
    if pre:
        record["pretrain_history"] = run_state["pretrain_history"]
    if run_state["resumes"]:
        record["resumed"] = run_state["resumes"]
    return record


def _fit_epochs(model, train_data, epoch, step, end, callbacks, verbose, backup_cb, stop, backup,
                eps_of_epoch=None):
    """Epochs `epoch`..`end - 1` of `model`, one `fit` call each, the first from `step`.

    `eps_of_epoch(e)`: the training attack's ε in epoch `e` (an ε warm-up), or None.
    """
    for e in range(epoch, end):
        skip = step if e == epoch else 0
        if eps_of_epoch is not None:
            eps = eps_of_epoch(e)
            if eps != model.training_eps:
                log(f"epoch {e + 1}: training eps {eps:.4g} (warm-up to {model.attack_params.get('eps'):.4g})")
            model.set_training_eps(eps)
        model.fit(
            train_data.epoch(e, skip),
            initial_epoch=e,
            epochs=e + 1,
            steps_per_epoch=train_data.steps - skip,
            validation_data=train_data.validation,
            callbacks=[*callbacks, backup_cb],
            verbose=verbose,
            shuffle=False,
        )
        _check_stopped(backup_cb, backup)


class _TrainingEpsLogger(keras.callbacks.Callback):
    """Adds the epoch's training ε to its logs (`history["train_eps"]` in `results.json`)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and getattr(self.model, "crafts_adversarial", False):
            logs["train_eps"] = float(self.model.training_eps)


def _check_stopped(backup_cb, backup):
    if backup_cb.stopped_at is not None:
        e, s = backup_cb.stopped_at
        raise backup_lib.Interrupted(
            f"interrupted at epoch {e + 1}, step {s}; backup {backup.path} "
            f"(position: {backup.position[0]} epoch(s), {backup.position[1]} step(s)); "
            "run the same command again to resume"
        )


def finish(model, config, record, backup, worker, started, verbose):
    """Phase 6 (chief only): `model.keras`, the test-split check, the export, `results.json`."""
    workdir = config.workdir
    classifier = model.classifier
    if worker.num_workers > 1 or not precision_lib.is_float32(classifier):
        # A plain float32 copy: what follows reads the weights on this worker
        # only, and judges and serves the model in float32 whatever trained it.
        plain = build_classifier(config)
        plain.set_weights(classifier.get_weights())
        classifier = plain
    if config.preprocessing.name in defenses.compose.TEST_TIME_ONLY:
        # Defense-GAN: the projection goes in front of the classifier trained
        # without it, for model.keras, the final check and the export.
        classifier = defenses.defended_model(test_time_layer(config), classifier, config.spec.image_shape)
    tmp_model = os.path.join(workdir, ".tmp-model.keras")
    classifier.save(tmp_model)
    os.replace(tmp_model, os.path.join(workdir, "model.keras"))

    history = record.pop("history")
    results = {
        "config": config.to_dict(),
        "training": config.train.describe(),
        "model": config.model_name,
        "eps": config.eps,
        "train_seconds": record.pop("train_seconds"),
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        **record,
    }
    if worker.num_workers > 1:
        results["workers"] = worker.num_workers
    if config.eval.num_examples > 0:
        log(f"evaluating on the first {config.eval.num_examples} test images")
        test_ds = data.make_pipeline(
            load_split(config, "test", config.eval.num_examples),
            batch_size=max(config.data.batch_size, 256),
            cache=False,
        )
        layer, model_fn, net_fn = defenses.compose.inference_fns(classifier)
        search = _search_copy(config, classifier, layer)
        specs = evaluation.adaptive.adapt(  # BPDA / EOT through a defence layer.
            final_attack_specs(config), layer=layer, net_fn=net_fn, model_fn=model_fn,
            search=search,
        )
        report = evaluation.robustness_report(
            model_fn,
            test_ds,
            specs,
            num_examples=config.eval.num_examples,
            verbose=1 if verbose == 1 else 0,
        )
        if search is not None:
            report["attack_precision"] = {"search": "bfloat16", "verdicts": "float32",
                                          "choice": config.eval.attack_precision}
        results["test"] = report
        print(evaluation.format_report(report))
    if config.export_dir:
        path = savedmodel.export_saved_model(
            classifier,
            config.export_dir,
            metadata={
                "dataset": config.data.dataset,
                "model": config.model_name,
                "objective": config.train.objective,
                "config": config.to_dict(),
                "test": results.get("test"),
            },
            input_check=config.serving_input_check,
            class_names=getattr(config.spec, "class_names", None),  # An image folder's subfolders.
        )
        results["export_path"] = path
        log(f"exported SavedModel to {path}")
        if results.get("test"):  # The final check, recorded in the version it measured.
            evaluation.record.write_record(path, evaluation.record.make_record(
                results["test"], evaluated_by="train", dataset=config.data.dataset, split="test",
                eps=config.eps, seed=config.train.seed, preprocessing=config.preprocessing.name,
                adaptive="auto",
            ))
    fileio.atomic_write_json(os.path.join(workdir, "results.json"), results)
    backup.remove()
    log(f"wrote {os.path.join(workdir, 'results.json')} ({time.time() - started:.0f} s in all)")
    return results


def _search_copy(config, classifier, layer):
    """`(model_fn, net_fn)` of a bfloat16 copy of `classifier`'s network (the float32
    `layer` in front) when `config.eval.attack_precision` searches in bfloat16, else None.
    The final check's verdicts stay the float32 classifier's (`attacks.search`)."""
    prec = precision_lib.resolve_attack_precision(config.eval.attack_precision)
    if not prec.mixed:
        return None
    log(f"final check: the attacks search on a bfloat16 copy ({prec.reason}); verdicts float32")
    if prec.warning:
        log(f"warning: {prec.warning}")
    _, net = defenses.compose.split(classifier)
    copy = precision_lib.search_copy(net, prec.policy)

    def search_net_fn(z):
        return copy(z, training=False)

    def search_model_fn(x):
        return search_net_fn(x if layer is None else layer(x, training=False))

    return search_model_fn, (None if layer is None else search_net_fn)


def _fit_ensemble(model, config, static_models, train_data, callbacks, verbose, start_epoch=None):
    """Algorithm 2 on the run's training examples (one worker; as arrays in memory)."""
    n, d = config.ensemble, config.data
    names = ensemble.parse_attack_set(n.attacks)
    x, y = ensemble.dataset_arrays(train_data.examples)
    fns = ensemble.make_attack_fns(
        names, eps=config.eps, steps=config.attack.steps, cw_steps=n.cw_steps, cw_const=n.cw_const
    )
    log(
        f"ensemble AT²L: A = {{{', '.join(names)}}}, M = {{current"
        f"{''.join(', ' + p for p, _ in static_models)}}}, regenerated every {n.regenerate_every} epoch(s)"
    )
    return ensemble.fit_ensemble(
        model,
        x,
        y,
        attack_fns=fns,
        static_models=static_models,
        epochs=config.train.epochs,
        regenerate_every=n.regenerate_every,
        batch_size=d.batch_size,
        seed=config.train.seed,
        validation_data=train_data.validation,
        callbacks=callbacks,
        verbose=verbose,
        initial_epoch=config.train.pretrain_epochs,
        start_epoch=start_epoch,
        log=log,
    )


def _describe_training(train):
    """`objective=at2l (λ1 1) triplet=logits/linf/random λ2 0.5 α 0.5 `: one phrase for the log."""
    d = train.describe()
    loss = d["loss"]
    params = " ".join(f"{'λ1' if k == 'lambda1' else 'β'} {v:g}" for k, v in loss.items() if k in ("lambda1", "beta"))
    text = f"objective={d['objective']}{f' ({params})' if params else ''} "
    if train.ema:
        text += f"ema={train.ema:g} "
    if train.eps_warmup:
        text += f"eps_warmup={train.eps_warmup} epoch(s) "
    if train.awp_gamma:
        text += f"awp γ {train.awp_gamma:g} from epoch {train.awp_warmup_epochs + 1} "
    t = d["triplet"]
    if t:
        text += (f"triplet={t['features']}/{t['distance']}/{t['negative']} "
                 f"λ2 {t['lambda2']:g} α {t['margin']:g} ")
    return text



__all__ = [
    "TrainingData",
    "build_classifier",
    "build_model",
    "default_verbosity",
    "training_eps",
    "final_attack_specs",
    "finish",
    "fit",
    "learning_rate",
    "load_datasets",
    "load_split",
    "run",
    "training_data",
]
