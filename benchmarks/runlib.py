"""Train runs for the benchmarks: reuse of a finished run, training, evaluation on MNIST."""

import os
import sys


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
    print(f"[benchmarks] reusing the finished run in {config.workdir}", file=sys.stderr, flush=True)
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
