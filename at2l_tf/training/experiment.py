"""One training run from an `ExperimentConfig`: data -> model -> fit -> test -> export.

Outputs, all under `config.workdir` unless noted:

* `checkpoints/epoch-NN.weights.h5`: weights after every epoch;
* `logs/`: TensorBoard logs (losses, accuracies, triplet term per epoch);
* `model.keras`: the trained classifier (images -> logits);
* `results.json`: the configuration, the training history and the final
  test-split table (clean, FGSM, PGD accuracy with eps, steps and sample size);
* `<export_dir>/<version>/`: the SavedModel for TF Serving (if `export_dir`).
"""

import os
import sys
import time

import keras
import tensorflow as tf

from at2l_tf import data, defenses, evaluation, fileio, models, savedmodel
from at2l_tf.training import ensemble
from at2l_tf.training.at2l_model import AT2LModel


def make_strategy(name):
    """`auto`: MirroredStrategy when more than one GPU is visible, else the default."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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


def build_model(config, strategy=None, steps_per_epoch=None):
    """Builds and compiles the `AT2LModel` of `config` (under `strategy`'s scope).

    `steps_per_epoch` is needed by learning-rate schedules only.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        classifier = build_classifier(config)
        params = config.attack.params()
        params["eps"] = config.eps
        model = AT2LModel(
            classifier,
            defense=config.train.defense,
            attack=config.attack.name,
            attack_params=params,
            lambda1=config.train.lambda1,
            lambda2=config.train.lambda2,
            margin=config.train.margin,
            norm=config.train.norm,
            seed=config.train.seed,
        )
        model.compile(optimizer=keras.optimizers.Adam(learning_rate(config, steps_per_epoch)))
    return model


def build_classifier(config):
    """The classifier of `config`: its defence layer (if any) in front of the network.

    The network is built for the layer's output (e.g. `C·levels` channels after
    a thermometer encoding, the padded size after random resizing).
    """
    spec = config.spec
    layer = defenses.compose.layer_from_config(config.preprocessing, spec.image_shape, config.train.seed)
    net_shape = spec.image_shape if layer is None else layer.compute_output_shape((None,) + spec.image_shape)[1:]
    net = models.get_model(config.model_name, input_shape=net_shape, num_classes=spec.num_classes)
    return defenses.defended_model(layer, net, spec.image_shape)


def load_datasets(config):
    """Returns `(train, validation)` pipelines of `config`."""
    d = config.data
    common = dict(data_dir=d.data_dir, validation_size=d.validation_size, image_size=d.image_size)
    train = data.make_pipeline(
        data.load(d.dataset, "train", max_examples=d.max_train_examples, **common),
        batch_size=d.batch_size,
        shuffle=True,
        seed=config.train.seed,
        drop_remainder=True,
    )
    val = None
    if d.validation_size > 0:
        val = data.make_pipeline(
            data.load(d.dataset, "validation", **common), batch_size=d.batch_size
        )
    return train, val


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


def run(config, *, verbose=1):
    """Trains, evaluates on the test split and exports, as `config` says.

    Args:
        config: a validated-or-not `ExperimentConfig` (it is validated first).
        verbose: Keras verbosity of `fit` (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        The results dict also written to `<workdir>/results.json`.
    """
    config.validate()
    keras.utils.set_random_seed(config.train.seed)
    started = time.time()
    static_models = ()
    if config.ensemble.attacks:  # Before anything is trained: a bad model fails here.
        static_models = ensemble.load_static_models(
            config.ensemble.static_models, config.spec.image_shape, config.spec.num_classes
        )
    train_ds, val_ds = load_datasets(config)
    strategy = make_strategy(config.train.strategy)
    steps = int(train_ds.cardinality())
    model = build_model(config, strategy, steps_per_epoch=steps if steps > 0 else None)
    _log(
        f"training {config.model_name} on {config.data.dataset} with defense={config.train.defense} "
        f"attack={config.attack.name} eps={config.eps:.4g} steps={config.attack.steps} "
        f"preprocessing={config.preprocessing.name} "
        f"replicas={strategy.num_replicas_in_sync}"
    )

    workdir = config.workdir
    os.makedirs(workdir, exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            os.path.join(workdir, "checkpoints", "epoch-{epoch:02d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs")),
    ]
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    extra = {}
    pre = config.train.pretrain_epochs
    if pre:
        _log(f"pre-training on clean data for {pre} epoch(s) (line 1 of Algorithms 1 and 2)")
        extra["pretrain_history"] = pretrain(model, train_ds, val_ds, config, callbacks, strategy, verbose)
    if config.ensemble.attacks:
        extra["ensemble"] = _fit_ensemble(model, config, static_models, val_ds, callbacks, verbose)
        history = extra["ensemble"].pop("history")
    else:
        history = model.fit(
            train_ds,
            initial_epoch=pre,
            epochs=pre + config.train.epochs,
            validation_data=val_ds,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        ).history
    train_seconds = time.time() - started

    classifier = model.classifier
    tmp_model = os.path.join(workdir, ".tmp-model.keras")
    classifier.save(tmp_model)
    os.replace(tmp_model, os.path.join(workdir, "model.keras"))

    results = {
        "config": config.to_dict(),
        "model": config.model_name,
        "eps": config.eps,
        "train_seconds": round(train_seconds, 1),
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        **extra,
    }
    if config.eval.num_examples > 0:
        _log(f"evaluating on the first {config.eval.num_examples} test images")
        test_ds = data.make_pipeline(
            data.load(
                config.data.dataset,
                "test",
                data_dir=config.data.data_dir,
                image_size=config.data.image_size,
                max_examples=config.eval.num_examples,
            ),
            batch_size=max(config.data.batch_size, 256),
            cache=False,
        )
        layer, model_fn, net_fn = defenses.compose.inference_fns(classifier)
        specs = evaluation.adaptive.adapt(  # BPDA / EOT through a defence layer.
            final_attack_specs(config), layer=layer, net_fn=net_fn, model_fn=model_fn
        )
        report = evaluation.robustness_report(
            model_fn,
            test_ds,
            specs,
            num_examples=config.eval.num_examples,
            verbose=1 if verbose else 0,
        )
        results["test"] = report
        print(evaluation.format_report(report))
    if config.export_dir:
        path = savedmodel.export_saved_model(
            classifier,
            config.export_dir,
            metadata={
                "dataset": config.data.dataset,
                "model": config.model_name,
                "defense": config.train.defense,
                "config": config.to_dict(),
                "test": results.get("test"),
            },
        )
        results["export_path"] = path
        _log(f"exported SavedModel to {path}")
    fileio.atomic_write_json(os.path.join(workdir, "results.json"), results)
    _log(f"wrote {os.path.join(workdir, 'results.json')} ({time.time() - started:.0f} s in all)")
    return results


def pretrain(model, train_ds, val_ds, config, callbacks, strategy, verbose):
    """Clean training of `model.classifier` for `config.train.pretrain_epochs` epochs.

    A separate `AT2LModel` (objective `none`) and Adam optimizer at the
    configured learning rate share the classifier's weights, so the
    adversarial phase starts from the pre-trained weights with fresh
    optimizer state. Returns the pre-training history.
    """
    with strategy.scope():
        clean = AT2LModel(model.classifier, defense="none", seed=config.train.seed)
        clean.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate))
    h = clean.fit(
        train_ds,
        epochs=config.train.pretrain_epochs,
        validation_data=val_ds,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    return {k: [float(v) for v in vs] for k, vs in h.history.items()}


def _fit_ensemble(model, config, static_models, val_ds, callbacks, verbose):
    """Algorithm 2 on the training split of `config` (arrays in memory)."""
    n, d = config.ensemble, config.data
    names = ensemble.parse_attack_set(n.attacks)
    x, y = ensemble.dataset_arrays(
        data.load(
            d.dataset,
            "train",
            data_dir=d.data_dir,
            validation_size=d.validation_size,
            image_size=d.image_size,
            max_examples=d.max_train_examples,
        )
    )
    fns = ensemble.make_attack_fns(
        names, eps=config.eps, steps=config.attack.steps, cw_steps=n.cw_steps, cw_const=n.cw_const
    )
    _log(
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
        validation_data=val_ds,
        callbacks=callbacks,
        verbose=verbose,
        initial_epoch=config.train.pretrain_epochs,
        log=_log,
    )


def _log(msg):
    print(f"[at2l_tf] {msg}", file=sys.stderr, flush=True)


__all__ = ["build_model", "pretrain", "learning_rate", "final_attack_specs", "load_datasets", "make_strategy", "run"]
