"""How a study's models are judged (`Evaluation`): an attack suite, AutoAttack per example,
the train command's own final check, and the pilot's APGD-CE on validation images."""

import itertools
import os
import time


def evaluate_mnist(model_fn, specs, num_examples, *, batch_size, verbose=0, seed=None):
    """`evaluation.robustness_report` of `model_fn` under `specs` on the first `num_examples`
    MNIST test images; with `seed`, Keras' random seed is set just before the attacks run."""
    import keras

    from at2l_tf import data, evaluation

    test = data.make_pipeline(data.load("mnist", "test", max_examples=num_examples), batch_size=batch_size,
                              cache=False)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return evaluation.robustness_report(model_fn, test, specs, num_examples=num_examples, verbose=verbose)


def attack_suite(ev, model_path, seed):
    """The run record's fields from `ev.attacks` on the model at `model_path` (`Evaluation`)."""
    from at2l_tf import savedmodel
    from at2l_tf.evaluation import AttackSpec, adaptive

    clf = savedmodel.load_classifier(model_path)
    columns = [a for a in ev.attacks if clf.preprocessing is not None or not a.layer_only]
    specs = []
    for mode, group in itertools.groupby(columns, key=lambda a: a.adaptive):
        group = [AttackSpec(a.name, {**a.params, **({"seed": seed} if a.seeded else {})}, label=a.label)
                 for a in group]
        specs += adaptive.adapt(group, mode=mode, layer=clf.preprocessing, net_fn=clf.net_fn,
                                model_fn=clf.model_fn, eot_draws=ev.eot_draws)
    report = evaluate_mnist(clf.model_fn, specs, ev.examples, batch_size=ev.batch_size, verbose=1, seed=seed)
    return {"clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
            "report": report}


def accuracies(report):
    """Clean accuracy, robust accuracy (the worst case) and accuracy per attack of a
    robustness report (a train run's `test`)."""
    return {"clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
            "accuracy": {k: v["accuracy"] for k, v in report["attacks"].items()}}


def autoattack(model_path, version, n, eps):
    """AutoAttack `version` on the first `n` MNIST test images, in float32, per example."""
    import numpy as np

    from at2l_tf import data, evaluation, savedmodel
    from at2l_tf.evaluation import paired

    clf = savedmodel.load_classifier(model_path)
    ds = data.make_pipeline(data.load("mnist", "test", max_examples=n), batch_size=500)
    spec = evaluation.AttackSpec("autoattack", {"eps": eps, "version": version})
    started = time.time()
    report = evaluation.robustness_report(clf.model_fn, ds, [spec], num_examples=n, verbose=0, per_example=True)
    per = report.pop("per_example")
    return {
        "version": version, "num_examples": report["num_examples"],
        "clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
        "clean_correct": paired.encode(per["clean"]),
        # Robust: right on the clean image and under the attack (the report's worst case).
        "robust_correct": paired.encode(np.logical_and(per["clean"], per["autoattack"])),
        "seconds": round(time.time() - started, 1),
    }


def validation_robust_accuracy(workdir, weights):
    """APGD-CE (20 iterations) robust accuracy on the first 1,000 MNIST validation images of the
    classifier in `workdir` with the training wrapper's `weights` (an epoch checkpoint)."""
    import keras

    from at2l_tf import data, evaluation, precision
    from at2l_tf.training.at2l_model import AT2LModel

    model = precision.to_float32(keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False))
    AT2LModel(model, objective="none").load_weights(weights)
    ds = data.make_pipeline(data.load("mnist", "validation", max_examples=1000), batch_size=500)
    spec = evaluation.AttackSpec("apgd_ce", {"eps": 0.3, "steps": 20, "restarts": 1})
    return evaluation.robustness_report(lambda x: model(x, training=False), ds, [spec], verbose=0)["robust_accuracy"]
