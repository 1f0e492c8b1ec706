r"""Evaluate a trained classifier: clean error and error under attacks.

    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l \
        --attacks=fgsm,pgd,cw --num_examples=1000 --output_json=results.json
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l \
        --source_model_dir=savedmodels/mnist_none          # transfer (black-box)

`--model_dir` is a SavedModel export of `python -m at2l_tf.train` (the export
root, whose newest version is used, or one version directory) or a `.keras`
file. The dataset defaults to the one recorded in the export's metadata. The
command checks every flag before it loads anything, evaluates the first
`--num_examples` images of `--split`, prints one table row per attack on
stdout (error, accuracy, eps and steps, mean L2 and L-inf perturbation; the
progress bar goes to stderr) and writes the same as JSON to `--output_json`,
atomically:

    {"clean_error": .., "clean_accuracy": .., "num_examples": .., "eps": ..,
     "attacks": {"pgd": {"error": .., "eps": .., "steps": .., "mean_l2": .., ...}},
     "model_dir": .., "dataset": .., "split": .., "source_model_dirs": [..], ...}

White-box by default: each attack is crafted on the evaluated model. With
`--source_model_dir`, adversarial examples are crafted on each source model
and transferred to the target (black-box, the paper's Fig. 2); the rows name
their source, and are labelled `<attack>@<source>` when there are several.

Bad input (an unknown attack, eps outside [0, 1], a missing model, a model
whose input shape is not the dataset's image shape, ...) ends with one line on
stderr and exit status 1, and nothing is written.
"""

import inspect
import os
import sys
import time

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
from at2l_tf import attacks, data, evaluation, fileio, savedmodel
from at2l_tf.errors import ConfigError

import keras  # noqa: E402  (after `cli`, which quiets TensorFlow's start-up logs)

# The attacks run by default: every one of these that is registered.
DEFAULT_ATTACKS = ("fgsm", "ifgsm", "pgd", "ll", "ill", "cw", "deepfool")
# Attacks that take --steps / --step_size (I-FGSM and I-LL share them).
_ITERATIVE = ("ifgsm", "ill")


def _attack_default(attack, param, fallback=None):
    """The default of `param` in `attack`'s signature: defaults live once, in the attack."""
    if attack not in attacks.available_attacks():
        return fallback
    sig = inspect.signature(attacks.get_attack(attack))
    default = sig.parameters[param].default
    return fallback if default is inspect.Parameter.empty else default


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags on `flag_values` and returns it.

    Called when the module runs as a command, not on import: `at2l_tf.train`
    defines `--dataset`, `--eps`, `--batch_size`, ... on the global
    `flags.FLAGS` too, and absl refuses a flag defined twice in one process.
    Tests pass a fresh `flags.FlagValues()`.

    Args:
        flag_values: the `absl.flags.FlagValues` to define the flags on.

    Returns:
        `flag_values`.
    """
    cw = lambda p: _attack_default("cw", p)  # noqa: E731
    df = lambda p: _attack_default("deepfool", p)  # noqa: E731
    known = ", ".join(attacks.available_attacks())
    default_attacks = [a for a in DEFAULT_ATTACKS if a in attacks.available_attacks()]
    string, integer, real, lst = (
        flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float, flags.DEFINE_list
    )
    table = [
        (string, "model_dir", None, "SavedModel export (root or version dir) or .keras file."),
        (string, "dataset", None, "mnist | cifar10 | cats_vs_dogs; default the export's."),
        (string, "data_dir", None, "TFDS data directory (CIFAR-10, Cats vs Dogs)."),
        (string, "split", "test", "train | validation | test."),
        (integer, "image_size", None, "Cats vs Dogs image side; default the model's input."),
        (lst, "attacks", default_attacks, f"Attacks to run ({known}); empty: clean only."),
        (real, "eps", None, "L-inf radius; default per dataset (MNIST 0.3, else 8/255)."),
        (integer, "steps", 10, "Iterations of I-FGSM and I-LL."),
        (real, "step_size", None, "I-FGSM / I-LL step size; default 2.5*eps/steps."),
        (integer, "pgd_steps", 40, "PGD iterations (Madry et al. on MNIST: 40)."),
        (real, "pgd_step_size", 0.01, "PGD step size (Madry et al. on MNIST: 0.01)."),
        (integer, "restarts", 1, "PGD random restarts."),
        (real, "cw_confidence", cw("confidence"), "C&W κ, the logit margin of a success."),
        (integer, "cw_steps", cw("max_iterations"), "C&W Adam steps per binary-search step."),
        (integer, "cw_binary_search_steps", cw("binary_search_steps"), "C&W searches on c."),
        (real, "cw_learning_rate", cw("learning_rate"), "C&W Adam learning rate."),
        (real, "cw_initial_const", cw("initial_const"), "C&W first constant c."),
        (real, "deepfool_overshoot", df("overshoot"), "DeepFool relative overshoot."),
        (integer, "deepfool_max_iter", df("max_iter"), "DeepFool maximum steps."),
        (integer, "deepfool_num_candidates", df("num_candidates"), "DeepFool candidate classes."),
        (integer, "num_examples", 1000, "Evaluate the first N images of the split."),
        (integer, "batch_size", 128, "Images per attack batch."),
        (integer, "seed", 0, "Random seed (PGD random starts)."),
        (lst, "source_model_dir", [], "Craft attacks on these models (transfer, black-box)."),
        (string, "output_json", None, "Also write the report here as JSON (atomically)."),
        (integer, "verbose", 1, "0 silent, 1 progress bar on stderr."),
    ]
    for define, name, default, help_ in table:
        define(name, default, help_, flag_values=flag_values)
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)
    return flag_values


def resolve_eps(f, dataset):
    """`--eps`, or the dataset's default radius."""
    return data.get_spec(dataset).default_eps if f.eps is None else f.eps


def attack_specs_from_flags(f, eps):
    """Maps parsed flags onto one `AttackSpec` per name in `--attacks`.

    `--steps`/`--step_size` drive I-FGSM and I-LL, `--pgd_*` and `--restarts`
    drive PGD, `--cw_*` C&W and `--deepfool_*` DeepFool; every other attack
    gets `eps` alone (if it takes one). Parameters are resolved here, so the
    report records the values used rather than "default".

    Args:
        f: parsed flag values (see `define_flags`).
        eps: the L-inf radius (see `resolve_eps`).

    Returns:
        A list of `evaluation.AttackSpec`.

    Raises:
        ConfigError: for an unknown attack name.
    """
    specs = []
    for name in f.attacks:
        if name == "pgd":
            params = dict(
                eps=eps, steps=f.pgd_steps, step_size=f.pgd_step_size, restarts=f.restarts
            )
        elif name in _ITERATIVE:
            step_size = 2.5 * eps / f.steps if f.step_size is None else f.step_size
            params = dict(eps=eps, steps=f.steps, step_size=step_size)
        elif name == "cw":
            params = dict(
                confidence=f.cw_confidence,
                max_iterations=f.cw_steps,
                binary_search_steps=f.cw_binary_search_steps,
                learning_rate=f.cw_learning_rate,
                initial_const=f.cw_initial_const,
            )
        elif name == "deepfool":
            params = dict(
                overshoot=f.deepfool_overshoot,
                max_iter=f.deepfool_max_iter,
                num_candidates=f.deepfool_num_candidates,
            )
        else:
            params = dict(eps=eps) if "eps" in attacks.get_entry(name).params else {}
        specs.append(evaluation.AttackSpec(name, params))
    return specs


def validate_flags(f):
    """Checks every flag that can be checked without loading anything.

    Raises:
        ConfigError: naming the first bad value.
        DatasetError: for an unknown `--dataset` or `--split`.
        FileNotFoundError: if `--model_dir` or a `--source_model_dir` does not exist.
    """
    for name in f.attacks:
        attacks.get_entry(name)  # Lists the known attacks.
    if len(set(f.attacks)) != len(f.attacks):
        dup = next(a for a in f.attacks if f.attacks.count(a) > 1)
        raise ConfigError(f"attack {dup!r} is listed twice in --attacks={','.join(f.attacks)}")
    if f.eps is not None:
        _at_least("eps", f.eps, 0.0)
        if f.eps > 1:
            raise ConfigError(f"eps must be <= 1 for images in [0, 1], received eps={f.eps}")
    _at_least("num_examples", f.num_examples, 1)
    _at_least("batch_size", f.batch_size, 1)
    # None = not registered (cw, deepfool) or the attack's default (step_size).
    checks = [("steps", 1), ("pgd_steps", 1), ("restarts", 1), ("cw_steps", 1),
              ("cw_binary_search_steps", 1), ("deepfool_max_iter", 1),
              ("deepfool_num_candidates", 2), ("step_size", 0.0), ("pgd_step_size", 0.0),
              ("cw_confidence", 0.0), ("deepfool_overshoot", 0.0)]
    for name, low in checks:
        if f[name].value is not None:
            _at_least(name, f[name].value, low)
    for name in ("cw_learning_rate", "cw_initial_const"):
        if f[name].value is not None and not f[name].value > 0:
            raise ConfigError(f"{name} must be > 0, received {name}={f[name].value}")
    if f.split not in data.SPLITS:
        raise ConfigError(f"unknown split {f.split!r}; known splits: {', '.join(data.SPLITS)}")
    if f.image_size is not None:
        _at_least("image_size", f.image_size, 8)
    if f.dataset is not None:
        data.get_spec(f.dataset)  # Unknown names fail here.
    for path in [f.model_dir, *f.source_model_dir]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"model path does not exist: {path}")


def check_compatible(classifier, spec):
    """Raises `ConfigError` unless `classifier` takes `spec`'s images and classes."""
    shape = tuple(classifier.input_shape)
    if len(shape) != len(spec.image_shape) or any(
        m is not None and m != d for m, d in zip(shape, spec.image_shape)
    ):
        hint = " (set --image_size)" if spec.name == "cats_vs_dogs" else ""
        raise ConfigError(
            f"images of the wrong shape: the model at {classifier.path} takes images of shape "
            f"{shape}, {spec.name} images have shape {tuple(spec.image_shape)}{hint}"
        )
    if classifier.num_classes != spec.num_classes:
        raise ConfigError(
            f"the model at {classifier.path} has {classifier.num_classes} classes, "
            f"{spec.name} has {spec.num_classes}"
        )


def evaluate_from_flags(f):
    """Runs the command on parsed flags: validate, load, attack, print, write.

    Args:
        f: parsed flag values (see `define_flags`).

    Returns:
        The report dict (also written to `--output_json` when given).
    """
    validate_flags(f)
    started = time.time()
    keras.utils.set_random_seed(f.seed)
    target = savedmodel.load_classifier(f.model_dir)
    meta = target.metadata
    dataset = f.dataset or meta.get("dataset")
    if dataset is None:
        raise ConfigError(
            f"--dataset is required: the model at {target.path} records no dataset in its metadata"
        )
    image_size = f.image_size or target.input_shape[0] or data.DEFAULT_IMAGE_SIZE
    spec = data.get_spec(dataset, image_size)
    check_compatible(target, spec)
    sources = {}
    for path in f.source_model_dir:
        source = savedmodel.load_classifier(path)
        check_compatible(source, spec)
        sources[path] = source.model_fn

    eps = resolve_eps(f, dataset)
    specs = attack_specs_from_flags(f, eps)
    for attack in specs:
        steps, step_size = attack.params.get("steps"), attack.params.get("step_size")
        if steps and step_size is not None and steps * step_size < eps:
            _log(
                f"warning: {attack.name} makes {steps} steps of {step_size:.4g}, which cannot "
                f"reach eps={eps:.4g} from x: a weak attack; raise its steps or step size"
            )
    # The split the model was trained with (the validation split depends on it).
    validation_size = (meta.get("config") or {}).get("data", {}).get(
        "validation_size", data.DEFAULT_VALIDATION_SIZE
    )
    ds = data.make_pipeline(
        data.load(
            dataset,
            f.split,
            data_dir=f.data_dir,
            validation_size=validation_size,
            image_size=image_size,
            max_examples=f.num_examples,
        ),
        batch_size=f.batch_size,
        cache=False,
    )
    mode = f"transfer from {', '.join(f.source_model_dir)}" if sources else "white-box"
    _log(
        f"evaluating {target.path} on the first {f.num_examples} {dataset} {f.split} images "
        f"({mode}): {', '.join(f.attacks) or 'clean only'}, eps={eps:.4g}"
    )
    report = evaluation.robustness_report(
        target.model_fn,
        ds,
        specs,
        sources=sources or None,
        num_examples=f.num_examples,
        verbose=f.verbose,
    )
    report.update(
        model_dir=f.model_dir,
        model_path=target.path,
        dataset=dataset,
        split=f.split,
        eps=eps,
        seed=f.seed,
        source_model_dirs=list(f.source_model_dir),
        seconds=round(time.time() - started, 1),
    )
    for key in ("model", "defense"):
        if key in meta:
            report[key] = meta[key]
    print(evaluation.format_report(report))
    if f.output_json:
        fileio.atomic_write_json(f.output_json, report)
        _log(f"wrote {f.output_json}")
    return report


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    evaluate_from_flags(flags.FLAGS)


def _at_least(name, value, low):
    if value is None or value < low:
        raise ConfigError(f"{name} must be >= {low}, received {name}={value}")


def _log(msg):
    print(f"[at2l_tf] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "evaluate")
