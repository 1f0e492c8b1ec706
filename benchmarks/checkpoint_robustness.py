r"""Robustness of a training run's checkpoints, epoch by epoch: does a long schedule overfit?

    python benchmarks/checkpoint_robustness.py --run_dir=runs/mnist_reference_v3 \
        --epochs=10,20,30,40,50,60,70,80,90,100 --num_examples=1000 --attacks=apgd_ce \
        --output_json=benchmarks/results/checkpoint_robustness_reference_v3.json
    python benchmarks/checkpoint_robustness.py \
        --markdown_from=benchmarks/results/checkpoint_robustness_reference_v3.json

The train command saves the weights after every epoch
(`<run_dir>/checkpoints/epoch-NN.weights.h5`). Each checkpoint asked for is put into the
run's own classifier (`<run_dir>/model.keras`, float32, its defence layer included), saved as
`<run_dir>/checkpoint_models/epoch-NN.keras`, and judged by `at2l_tf.evaluate` with the same
attacks on the same first `--num_examples` test images (every `--<attack>_<param>` flag of the
evaluate command is passed on); each evaluation keeps its units in
`<run_dir>/checkpoint_models/epoch-NN.work`, so a killed run continues. The JSON holds, per
epoch, clean and per-attack accuracy, the worst case, and the run's own validation figures
for that epoch from `results.json` (`val_acc`, `val_adv_acc`: held-out images under the
training attack), so the training attack's view and a stronger attack's sit side by side.

Why: adversarial training on long schedules can overfit robustly (Rice, Wong and Kolter,
ICML 2020: robust test accuracy peaks and then falls while training robustness keeps
rising); their cure is to keep the checkpoint that is best on held-out data. This is a
diagnostic on test images: an epoch chosen by these figures would be chosen on the test
set, so a recipe that stops early must choose on held-out data (`val_*`).

We wrote this rather than use a Keras callback: the question is asked after a run, of
checkpoints the run already saved, with the evaluate command's full attacks.
"""

import json
import os
import time

from absl import flags

from at2l_tf import cli  # First: at2l_tf sets TensorFlow's environment defaults.
import mdtable  # benchmarks/: this script's directory is on sys.path.  # isort: skip
import provenance  # isort: skip

from at2l_tf import evaluate as ev  # noqa: E402
from at2l_tf.errors import ConfigError  # noqa: E402
from at2l_tf.log import log  # noqa: E402

NAME = "checkpoint_robustness"

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "The training run's directory (its --workdir): model.keras, "
                    "results.json and checkpoints/ (required).")
flags.DEFINE_list("epochs", None, "Epochs whose checkpoints to judge (required), e.g. 10,20,30.")
flags.DEFINE_integer("num_examples", 1000, "Evaluate the first N test images.")
flags.DEFINE_integer("batch_size", 500, "Images per attack batch.")
flags.DEFINE_list("attacks", ["apgd_ce"], "Attacks (evaluate's names).")
flags.DEFINE_float("eps", None, "L-inf radius; default the dataset's (MNIST 0.3).")
flags.DEFINE_integer("seed", 0, "Seed of every evaluation.")
flags.DEFINE_string("output_json", None, "Where to write the curve (atomically).")
flags.DEFINE_string("markdown_from", None, "Print the table of this JSON and exit.")
flags.DEFINE_integer("verbose", 1, "Progress of each evaluation: 0 none, 1 bar on a terminal, "
                     "2 one line per batch and attack stage.")
ev.define_attack_param_flags(FLAGS, " Passed to every evaluation.")  # --autoattack_version, --apgd_ce_steps, ...


def _log(msg):
    log(msg, prefix=NAME)


def parse_epochs(values, available):
    """The sorted epochs of `values` (strings); a one-line `ConfigError` for a value that is
    not a positive integer or whose checkpoint is not among `available`."""
    epochs = []
    for value in values:
        try:
            epoch = int(value)
        except ValueError:
            raise ConfigError(f"--epochs takes whole numbers, received {value!r}") from None
        if epoch not in available:
            known = f"{min(available)}..{max(available)}" if available else "none"
            raise ConfigError(f"no checkpoint for epoch {epoch} (the run has epochs {known})")
        epochs.append(epoch)
    return sorted(set(epochs))


def checkpoints(run_dir):
    """`{epoch: path}` of the run's per-epoch weight files."""
    folder = os.path.join(run_dir, "checkpoints")
    out = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        stem = name.removesuffix(".weights.h5")
        if stem != name and stem.startswith("epoch-") and stem[6:].isdigit():
            out[int(stem[6:])] = os.path.join(folder, name)
    return out


def checkpoint_model(run_dir, epoch, weights, ema=0.0):
    """`<run_dir>/checkpoint_models/epoch-NN.keras`: the run's classifier with the weights of
    `epoch` (written once, atomically; the file is reused after). A run with weight
    averaging (`ema` > 0) checkpoints the average beside the weights; the model is the
    average, as the run's own `model.keras` is."""
    import keras
    import numpy as np

    from at2l_tf.training import AT2LModel

    path = os.path.join(run_dir, "checkpoint_models", f"epoch-{epoch:02d}.keras")
    if os.path.exists(path):
        return path
    classifier = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    # The train command checkpoints its training model (`AT2LModel`): the classifier's
    # variables sit under it, beside the optimizer's, which are not needed here.
    wrapper = AT2LModel(classifier, objective="none", ema=ema)
    wrapper.classifier(np.zeros((1, *classifier.input_shape[1:]), np.float32))
    wrapper.load_weights(weights, skip_mismatch=False)
    if wrapper.weight_average is not None:
        wrapper.weight_average.finalize()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-epoch-{epoch:02d}.keras")
    classifier.save(tmp)
    os.replace(tmp, path)
    return path


def config_for(model_path, settings):
    stem = os.path.splitext(model_path)[0]
    return ev.EvaluationConfig(
        model=ev.ModelSection(model_dir=model_path),
        images=ev.ImagesSection(dataset=settings["dataset"], data_dir=settings["data_dir"],
                                image_dir=settings["image_dir"], num_examples=settings["num_examples"],
                                batch_size=settings["batch_size"]),
        attacks=ev.AttacksSection(names=tuple(settings["attacks"]), eps=settings["eps"],
                                  seed=settings["seed"], params=settings["params"]),
        output=ev.OutputSection(output_json=f"{stem}.json", workdir=f"{stem}.work",
                                verbose=settings["verbose"]),
    )


def row(epoch, report, history):
    """One epoch's figures: the evaluation's and the run's own validation ones."""
    at = lambda key: history[key][epoch - 1] if len(history.get(key, ())) >= epoch else None  # noqa: E731
    return {
        "epoch": epoch,
        "clean_accuracy": report["clean_accuracy"],
        "attacks": {label: a["accuracy"] for label, a in report["attacks"].items()},
        "robust_accuracy": report["robust_accuracy"],
        "seconds": report["seconds"],
        "val_acc": at("val_acc"),
        "val_adv_acc": at("val_adv_acc"),
    }


def markdown(record):
    """The table of a results JSON (what the run prints and `--markdown_from` reprints)."""
    s = record["settings"]
    labels = list(record["rows"][0]["attacks"]) if record["rows"] else []
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [[r["epoch"], pct(r["val_acc"]), pct(r["val_adv_acc"]), pct(r["clean_accuracy"]),
             *(pct(r["attacks"][k]) for k in labels), f"**{pct(r['robust_accuracy'])}**"]
            for r in record["rows"]]
    head = [f"**{s['run_dir']}**, first {s['num_examples']} test images, eps {record['eps']}, "
            f"seed {s['seed']}; CPU {record['machine']['cpu_model']}; {record['date']}", ""]
    return "\n".join(head + mdtable.markdown_table(
        ["epoch", "val clean", "val adv. (training attack)", "test clean", *labels, "**robust**"], rows))


def main(argv):
    if mdtable.markdown_only(argv, FLAGS.markdown_from, markdown):
        return
    started = time.time()
    if not FLAGS.run_dir:
        raise ConfigError("--run_dir is required (the training run's --workdir)")
    for name in ("model.keras", "results.json"):
        if not os.path.isfile(os.path.join(FLAGS.run_dir, name)):
            raise ConfigError(f"{FLAGS.run_dir} has no {name}: not a finished training run")
    if not FLAGS.epochs:
        raise ConfigError("--epochs is required, e.g. --epochs=10,20,30")
    found = checkpoints(FLAGS.run_dir)
    epochs = parse_epochs(FLAGS.epochs, set(found))
    settings = {"run_dir": FLAGS.run_dir, "epochs": epochs, "num_examples": FLAGS.num_examples,
                "batch_size": FLAGS.batch_size, "attacks": list(FLAGS.attacks), "eps": FLAGS.eps,
                "seed": FLAGS.seed, "params": ev.attack_params_from_flags(FLAGS), "verbose": FLAGS.verbose}
    if not settings["attacks"]:
        raise ConfigError("--attacks needs at least one attack")
    with open(os.path.join(FLAGS.run_dir, "results.json")) as fh:
        run = json.load(fh)
    history = run.get("history") or {}
    data = run["config"]["data"]  # The run's test images (a .keras file records no dataset).
    settings.update(dataset=data["dataset"], data_dir=data.get("data_dir"), image_dir=data.get("image_dir"))
    ema = run["config"]["train"].get("ema") or 0.0  # The run's weight averaging, if any.
    rows, eps = [], None
    for i, epoch in enumerate(epochs):
        _log(f"epoch {epoch} ({i + 1} of {len(epochs)})")
        model_path = checkpoint_model(FLAGS.run_dir, epoch, found[epoch], ema)
        config = config_for(model_path, settings)
        config.validate()
        report = ev.evaluate(config)
        eps = report["eps"]
        rows.append(row(epoch, report, history))
    record = {"benchmark": NAME, "settings": settings, "eps": eps, "model": run.get("model"),
              "train_seconds": run.get("train_seconds"), "rows": rows,
              "versions": provenance.versions(None),
              **provenance.provenance(os.path.basename(__file__), started)}
    print(markdown(record))
    provenance.write(FLAGS.output_json, record, os.path.basename(__file__), started)


if __name__ == "__main__":
    cli.run(main, NAME)
