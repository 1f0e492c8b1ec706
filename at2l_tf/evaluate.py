r"""Evaluate a trained classifier: clean error, error under attacks, and the worst case.

    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_reference   # FGSM, PGD, AutoAttack
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l \
        --attacks=fgsm,pgd,cw --num_examples=1000 --output_json=results.json
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_reference \
        --attacks=apgd_ce,apgd_t,square --eps_sweep=0,0.1,0.2,0.3,0.4   # CSV + PNG curve
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
     "robust_accuracy": .., "robust_accuracy_attacks": [..], "black_box_only_fooled": ..,
     "attacks": {"pgd": {"error": .., "eps": .., "steps": .., "mean_l2": .., ...}},
     "flags": [{"check": .., "message": ..}], "eps_sweep": {..},
     "model_dir": .., "dataset": .., "split": .., "source_model_dirs": [..], ...}

`robust_accuracy` (and the table's last row, "worst case") is the share of
examples classified correctly under *every* L-inf attack run: the figure to
quote, with the attacks, eps, steps, restarts and number of examples beside it.
White-box runs also check for gradient masking on the first batch (zero input
gradients, outputs random at inference, probabilities instead of logits,
examples only a black-box attack fools); each check that fires is a warning on
stderr and an entry of `flags` naming the adaptive attack to run (BPDA, EOT).

A model with a defence layer in front (thermometer encoding, random resizing;
its export records it) is attacked adaptively by default (`--adaptive=auto`):
every gradient attack runs through the layer's adaptive attack — BPDA for the
thermometer code, EOT over `--eot_draws` draws for randomization — and the
JSON says which (`attacks.<label>.adaptive`). `--adaptive=none` gives the
naive, masked numbers for comparison. `ls_pga` attacks the network behind a
thermometer encoding.

Every attack parameter is a flag `--<attack>_<param>` (`--pgd_steps`,
`--apgd_t_target_classes`, `--square_queries`, `--autoattack_version`, ...;
C&W's Adam steps are `--cw_steps`), generated from the attack registry; unset,
it is the attack function's own default, shown by `--help`.

White-box by default: each attack is crafted on the evaluated model. With
`--source_model_dir`, adversarial examples are crafted on each source model
and transferred to the target (black-box, the paper's Fig. 2); the rows name
their source, and are labelled `<attack>@<source>` when there are several.

Bad input (an unknown attack, eps outside [0, 1], a missing model, a model
whose input shape is not the dataset's image shape, ...) ends with one line on
stderr and exit status 1, and nothing is written.
"""

import os
import sys
import time

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
from at2l_tf import attacks, data, evaluation, fileio, savedmodel
from at2l_tf.attacks import iterative
from at2l_tf.errors import ConfigError

import keras  # noqa: E402  (after `cli`, which quiets TensorFlow's start-up logs)

# The attacks run by default: the paper's FGSM, the PGD-40 figure the project
# used to report, and AutoAttack, whose worst case is the figure to quote.
DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack")
_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def attack_flags():
    """`[(flag name, attack entry, Param)]` of every registered attack parameter.

    Flags are `--<attack>_<param>` unless the attack declares another name;
    their default is `None`, standing for the attack function's own default
    (shown in the help text), so defaults live once, in the attack.
    """
    out = []
    for name in attacks.available_attacks():
        entry = attacks.get_entry(name)
        for param in entry.user_params:
            out.append((entry.flag_name(param), entry, param))
    return out


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
    known = ", ".join(attacks.available_attacks())
    string, integer, real, lst = (
        flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float, flags.DEFINE_list
    )
    table = [
        (string, "model_dir", None, "SavedModel export (root or version dir) or .keras file."),
        (string, "dataset", None, "mnist | cifar10 | cats_vs_dogs; default the export's."),
        (string, "data_dir", None, "TFDS data directory (CIFAR-10, Cats vs Dogs)."),
        (string, "split", "test", "train | validation | test."),
        (integer, "image_size", None, "Cats vs Dogs image side; default the model's input."),
        (lst, "attacks", list(DEFAULT_ATTACKS), f"Attacks to run ({known}); empty: clean only."),
        (real, "eps", None, "L-inf radius; default per dataset (MNIST 0.3, else 8/255)."),
        (lst, "eps_sweep", [], "Also sweep these eps values (e.g. 0,0.1,0.2,0.3): CSV + PNG curve."),
        (string, "curve_output", None, "Path stem of the sweep's .csv/.png; default beside "
         "--output_json, else ./robustness_curve."),
        (integer, "num_examples", 1000, "Evaluate the first N images of the split."),
        (integer, "batch_size", 128, "Images per attack batch."),
        (integer, "seed", 0, "Random seed (random starts, Square's squares)."),
        (string, "adaptive", "auto", "Gradient attacks on a model with a defence layer: auto (its "
         "adaptive attack: BPDA for thermometer, EOT for random_resize_pad) | none (naive, masked) "
         "| bpda | eot."),
        (integer, "eot_draws", evaluation.adaptive.DEFAULT_EOT_DRAWS, "Random draws averaged by EOT."),
        (lst, "source_model_dir", [], "Craft attacks on these models (transfer, black-box)."),
        (string, "output_json", None, "Also write the report here as JSON (atomically)."),
        (integer, "verbose", 1, "0 silent, 1 progress bar on stderr."),
    ]
    for define, name, default, help_ in table:
        define(name, default, help_, flag_values=flag_values)
    for flag, entry, param in attack_flags():
        default = entry.default(param.name)
        shown = f" (default {default})" if default is not None else ""
        _DEFINE[param.type](
            flag, None, f"{entry.name}: {param.help}{shown}.", flag_values=flag_values
        )
    flags.mark_flag_as_required("model_dir", flag_values=flag_values)
    return flag_values


def resolve_eps(f, dataset):
    """`--eps`, or the dataset's default radius."""
    return data.get_spec(dataset).default_eps if f.eps is None else f.eps


def attack_specs_from_flags(f, eps):
    """Maps parsed flags onto one `AttackSpec` per name in `--attacks`.

    Each attack gets `eps` and `seed` if it takes them, and its own
    `--<attack>_<param>` flags; unset flags resolve to the function's
    defaults here (`step_size=None` stays `None`: it depends on eps and
    steps, and the attack computes it), so the report records the values used.

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
        entry = attacks.get_entry(name)
        params = {}
        if "eps" in entry.params:
            params["eps"] = eps
        if "seed" in entry.params:
            params["seed"] = f.seed
        for param in entry.user_params:
            value = f[entry.flag_name(param)].value
            params[param.name] = entry.default(param.name) if value is None else value
        if "step_size" in params and "steps" in params:  # Record the iterative default used.
            params["step_size"] = iterative.default_step(eps, params["steps"], params["step_size"])
        specs.append(evaluation.AttackSpec(name, {k: v for k, v in params.items() if v is not None}))
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
        _check_eps("eps", f.eps)
    sweep = parse_eps_sweep(f.eps_sweep)
    if sweep and not f.attacks:
        raise ConfigError("--eps_sweep needs at least one attack in --attacks")
    _at_least("num_examples", f.num_examples, 1)
    _at_least("batch_size", f.batch_size, 1)
    evaluation.adaptive.check_mode(f.adaptive)
    _at_least("eot_draws", f.eot_draws, 1)
    if f.source_model_dir and any(attacks.get_entry(a).inputs != "images" for a in f.attacks):
        raise ConfigError("attacks behind a defence layer (ls_pga) are white-box: drop --source_model_dir")
    for flag, _, param in attack_flags():
        param.check(f[flag].value, flag)
    if f.split not in data.SPLITS:
        raise ConfigError(f"unknown split {f.split!r}; known splits: {', '.join(data.SPLITS)}")
    if f.image_size is not None:
        _at_least("image_size", f.image_size, 8)
    if f.dataset is not None:
        data.get_spec(f.dataset)  # Unknown names fail here.
    for path in [f.model_dir, *f.source_model_dir]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"model path does not exist: {path}")


def parse_eps_sweep(values):
    """`--eps_sweep` as floats, checked: each in [0, 1], strictly increasing."""
    out = []
    for v in values:
        try:
            eps = float(v)
        except ValueError:
            raise ConfigError(f"eps_sweep values must be numbers, received {v!r}") from None
        _check_eps("eps_sweep", eps)
        if out and eps <= out[-1]:
            raise ConfigError(f"eps_sweep must increase, received {','.join(values)}")
        out.append(eps)
    return out


def _check_eps(name, eps):
    _at_least(name, eps, 0.0)
    if eps > 1:
        raise ConfigError(f"{name} must be <= 1 for images in [0, 1], received {name}={eps}")


def attack_specs_for(f, eps, target, sources):
    """`attack_specs_from_flags`, then, white-box, each attack on what it must
    differentiate (`evaluation.adaptive.adapt`: BPDA / EOT through the target's
    defence layer under `--adaptive`, LS-PGA behind the thermometer)."""
    specs = attack_specs_from_flags(f, eps)
    if sources:
        return specs
    return evaluation.adaptive.adapt(
        specs,
        layer=target.preprocessing,
        net_fn=target.net_fn,
        model_fn=target.model_fn,
        mode=f.adaptive,
        eot_draws=f.eot_draws,
    )


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
    specs = attack_specs_for(f, eps, target, sources)
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
        per_example=True,
    )
    per_example = report.pop("per_example")
    report.update(
        model_dir=f.model_dir,
        model_path=target.path,
        dataset=dataset,
        split=f.split,
        eps=eps,
        seed=f.seed,
        source_model_dirs=list(f.source_model_dir),
        preprocessing=target.preprocessing_name,
        adaptive=None if sources else f.adaptive,
    )
    for key in ("model", "defense"):
        if key in meta:
            report[key] = meta[key]
    if not sources:
        x, y = next(iter(ds))
        linf = report["robust_accuracy_attacks"]
        entry = lambda k: attacks.get_entry(report["attacks"][k]["attack"])  # noqa: E731
        report["flags"] = evaluation.masking.check_gradient_masking(
            target.model_fn,
            x,
            y,
            # AutoAttack runs Square itself: it is neither side of the comparison.
            per_example={k: per_example[k] for k in linf if not entry(k).composite},
            black_box=[k for k in linf if entry(k).black_box],
        )
    sweep = parse_eps_sweep(f.eps_sweep)
    if sweep:
        stem = f.curve_output or (
            os.path.splitext(f.output_json)[0] + "_curve" if f.output_json else "robustness_curve"
        )
        report["eps_sweep"] = run_eps_sweep(f, target, ds, sweep, sources, stem)
    report["seconds"] = round(time.time() - started, 1)
    print(evaluation.format_report(report))
    for flag in report.get("flags", []):
        _log(f"warning: {flag['message']}")
    if f.output_json:
        fileio.atomic_write_json(f.output_json, report)
        _log(f"wrote {f.output_json}")
    return report


def run_eps_sweep(f, target, ds, sweep, sources, stem):
    """Accuracy against eps for each attack of `--attacks` and their worst case.

    Writes `<stem>.csv` and `<stem>.png` and returns `{"eps": [...], "curves":
    {label: [accuracy, ...]}, "csv": path, "png": path}`.
    """
    curves = {}
    for i, eps in enumerate(sweep):
        _log(f"eps sweep {i + 1}/{len(sweep)}: eps={eps:.4g}")
        rep = evaluation.robustness_report(
            target.model_fn,
            ds,
            attack_specs_for(f, eps, target, sources),
            sources=sources or None,
            num_examples=f.num_examples,
            verbose=f.verbose,
        )
        for label, entry in rep["attacks"].items():
            curves.setdefault(label, []).append(entry["accuracy"])
        worst = rep["robust_accuracy"]
        curves.setdefault(evaluation.plots.WORST_CASE, []).append(
            rep["clean_accuracy"] if worst is None else worst
        )
    # Worst case last, so that it is drawn on top and is the CSV's last column.
    curves[evaluation.plots.WORST_CASE] = curves.pop(evaluation.plots.WORST_CASE)
    csv_path = evaluation.plots.write_curve_csv(stem + ".csv", sweep, curves)
    png_path = evaluation.plots.plot_curves(
        stem + ".png", sweep, curves, title=os.path.basename(f.model_dir.rstrip("/")),
        num_examples=f.num_examples,
    )
    _log(f"wrote {csv_path} and {png_path}")
    return {"eps": sweep, "curves": curves, "csv": csv_path, "png": png_path}


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
