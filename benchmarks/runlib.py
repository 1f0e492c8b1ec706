"""Train runs for the benchmarks: reuse of a finished run, training, evaluation on MNIST."""

import os
import time


def finished_run(config):
    """The `results.json` of a finished train run of `config` in its workdir, else `None`.

    Finished: `results.json` and `model.keras` exist and the recorded
    configuration equals `config`'s (`at2l_tf.identity`; settings added to the
    configuration after the run was recorded count as their defaults), so a
    benchmark that is run again resumes instead of training again.
    """
    from at2l_tf import identity as run_identity

    results = os.path.join(config.workdir, "results.json")
    if not (os.path.exists(results) and os.path.exists(os.path.join(config.workdir, "model.keras"))):
        return None
    done = run_identity.read(results)
    recorded = run_identity.flatten(done.get("config") or {}, type(config)().to_dict())
    if run_identity.differences(recorded, config.to_dict()):
        return None
    from at2l_tf.log import log

    log(f"reusing the finished run in {config.workdir}", prefix="benchmarks")
    return done


def train(config):
    """The results of a train run of `config`: the finished one in its workdir, or a new
    run (`experiment.run`, one line per epoch), so that a benchmark run again resumes."""
    from at2l_tf import experiment

    return finished_run(config) or experiment.run(config, verbose=2)


def evaluate_mnist(model_fn, specs, num_examples, *, batch_size, verbose=0, seed=None):
    """`evaluation.robustness_report` of `model_fn` under `specs` on the first
    `num_examples` MNIST test images, in batches of `batch_size`; with `seed`,
    Keras' random seed is set just before the attacks run."""
    from at2l_tf import data, evaluation

    test = data.make_pipeline(
        data.load("mnist", "test", max_examples=num_examples), batch_size=batch_size, cache=False
    )
    if seed is not None:
        import keras

        keras.utils.set_random_seed(seed)
    return evaluation.robustness_report(
        model_fn, test, specs, num_examples=num_examples, verbose=verbose
    )


def accuracies(report):
    """Clean accuracy, robust accuracy (the worst case) and accuracy per attack of a
    robustness report (a train run's `test`)."""
    return {
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": report["robust_accuracy"],
        "accuracy": {k: v["accuracy"] for k, v in report["attacks"].items()},
    }


def autoattack(model_path, version, n, eps=0.3):
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
    AT2LModel(model, defense="none").load_weights(weights)
    ds = data.make_pipeline(data.load("mnist", "validation", max_examples=1000), batch_size=500)
    spec = evaluation.AttackSpec("apgd_ce", {"eps": 0.3, "steps": 20, "restarts": 1})
    return evaluation.robustness_report(lambda x: model(x, training=False), ds, [spec], verbose=0)["robust_accuracy"]
