r"""Evaluate a trained classifier: clean error, error under attacks, and the worst case.

    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_reference   # FGSM, PGD, AutoAttack
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l \
        --attacks=fgsm,pgd,cw --num_examples=1000 --output_json=results.json
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_reference \
        --attacks=apgd_ce,apgd_t,square --eps_sweep=0,0.1,0.2,0.3,0.4   # CSV + PNG curve
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l \
        --source_model_dir=savedmodels/mnist_none          # transfer (black-box)
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_at2l --num_examples=10000 \
        --output_json=aa.json --record      # resumable (aa.work/), recorded in the version
    python -m at2l_tf.evaluate --show=savedmodels/mnist_at2l   # what was recorded

`--model_dir` is a SavedModel export of `python -m at2l_tf.train` (the export
root, whose newest version is used, or one version directory) or a `.keras`
file. The dataset defaults to the one recorded in the export's metadata. The
command checks every flag before it loads anything, evaluates the first
`--num_examples` images of `--split`, prints one table row per attack on
stdout (error, accuracy, eps and steps, mean L2 and L-inf perturbation; the
progress goes to stderr) and writes the same as JSON to `--output_json`,
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

**Resume.** Each batch's results, per attack (per example: right or wrong,
perturbation norms; the time and seed), are written as they come to a work
directory, `--workdir` (default beside `--output_json`: `report.json` ->
`report.work/`; `--workdir=''` keeps nothing), one small file each, atomically.
The same command started again continues where a killed run stopped and ends
with the same JSON as an uninterrupted run (but for the times: `seconds` at the
top, per attack, and per AutoAttack stage); Ctrl-C stops at once, keeps what is
finished and exits with status 130. A workdir is continued only by the same
evaluation: another model (version or weights), other images, another eps,
seed or attack parameter is refused with one line naming every difference,
and nothing in it is touched; `--output_json`, `--verbose`, `--strategy` and
`--record` may change. A finished workdir stays: the same command rebuilds the
JSON from it without attacking again (e.g. to add `--record`); delete it to
start over. It costs about 1.5 ms per batch and attack, 0.02% of a small
AutoAttack run (`benchmarks/evaluate_persistence.py`).

**Progress** goes to stderr: a Keras progress bar on a terminal, else one line
per batch and attack (and AutoAttack stage): examples reached, still robust,
elapsed, ETA (`--verbose=2` gives lines on a terminal too, `--verbose=0` nothing).

**Several workers.** `--strategy=multi_worker` with `TF_CONFIG` (as `train`;
the same command on every worker): worker k of n attacks the batches b with
b mod n = k, whole, so every batch is attacked exactly as one process would;
the chief gathers every worker's per-example results through the strategy's
collectives (no shared files) and alone prints the table and writes the JSON,
the same numbers as one process on the same images and seed. Each worker keeps
its own batches in its workdir and resumes them; a worker that dies leaves the
others waiting in the collective: start it again.

**Robustness record.** `--record` appends the summary (attacks and their
parameters, eps, images, clean and worst-case accuracy, masking flags, date,
package version, git commit) to the SavedModel version's
`assets/robustness.json` (`evaluation.record`); `--show=MODEL_DIR` prints the
records of a model (export root or version) and exits.

Bad input (an unknown attack, eps outside [0, 1], a missing model, a model
whose input shape is not the dataset's image shape, ...) ends with one line on
stderr and exit status 1, and nothing is written.
"""

import json
import os
import sys
import time

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
import at2l_tf
from at2l_tf import attacks, data, errors, evaluation, fileio, image_folder, savedmodel
from at2l_tf.attacks import iterative
from at2l_tf.errors import ConfigError
from at2l_tf.training import backup, distribute

import keras  # noqa: E402  (after `cli`, which quiets TensorFlow's start-up logs)

# The attacks run by default: the paper's FGSM, the PGD-40 figure the project
# used to report, and AutoAttack, whose worst case is the figure to quote.
DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack")
STRATEGIES = ("default", "multi_worker")
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
        (string, "image_dir", None, "Folder of class subfolders (dataset image_folder); default "
         "the one the model was trained on."),
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
        (string, "workdir", None, "Keep each batch's results here as they come, so that the same "
         "command continues a killed run; default beside --output_json (<name>.work/); '' keeps "
         "none. Another evaluation's workdir is refused."),
        (string, "strategy", "default", "default (one process) | multi_worker (the workers of "
         "TF_CONFIG share the batches; the chief gathers the results and writes the JSON)."),
        (flags.DEFINE_bool, "record", False, "Also write the summary into the SavedModel "
         "version's assets/robustness.json (white-box only)."),
        (string, "show", None, "Print the robustness record of this SavedModel (export root or "
         "version) and exit."),
        (integer, "verbose", 1, "0 silent; 1 progress on stderr: a bar on a terminal, else one "
         "line per batch and attack stage; 2 lines even on a terminal."),
    ]
    for define, name, default, help_ in table:
        define(name, default, help_, flag_values=flag_values)
    for flag, entry, param in attack_flags():
        default = entry.default(param.name)
        shown = f" (default {default})" if default is not None else ""
        _DEFINE[param.type](
            flag, None, f"{entry.name}: {param.help}{shown}.", flag_values=flag_values
        )
    return flag_values


def resolve_eps(f, dataset, image_dir=None):
    """`--eps`, or the dataset's default radius."""
    return data.get_spec(dataset, image_dir=image_dir).default_eps if f.eps is None else f.eps


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
    if not f.model_dir:
        raise ConfigError("--model_dir is required (or --show=MODEL_DIR to print a record)")
    if f.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {f.strategy!r} for evaluate; known: {', '.join(STRATEGIES)}"
        )
    if f.record and f.source_model_dir:
        raise ConfigError("--record records a white-box evaluation: drop --source_model_dir")
    if f.record and os.path.isfile(f.model_dir):
        raise ConfigError(
            f"--record writes into a SavedModel version directory; {f.model_dir} is a file"
        )
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
    if f.dataset is not None and f.dataset != "image_folder":
        data.get_spec(f.dataset)  # Unknown names fail here.
    if f.image_dir or f.dataset == "image_folder":
        data.get_spec("image_folder", f.image_size or 8, f.image_dir)  # A missing folder fails here.
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


def resolve_workdir(f):
    """`--workdir`; unset, `<output_json without .json>.work` beside `--output_json`
    (or `None`, nothing kept, without it); `''`: `None`."""
    if f.workdir is not None:
        return f.workdir or None
    if f.output_json:
        return os.path.splitext(f.output_json)[0] + ".work"
    return None


def evaluation_identity(f, target, dataset, image_size, eps):
    """The settings that decide an evaluation's figures, as a flat dict keyed by flag name.

    A workdir holding results of another identity is refused. Left out: where
    the outputs go (`--output_json`, `--workdir`, `--curve_output`), how the
    work is run or shown (`--strategy`, `--verbose`) and `--record`; each
    attack's parameters are in as they resolve (unset flags: the attack's
    defaults); the model is in by its resolved path and digest
    (`savedmodel.model_digest`), so a new version under the same export root
    is another evaluation.
    """
    ident = {
        "model_dir": os.path.abspath(target.path),
        "model_digest": savedmodel.model_digest(target.path),
        "dataset": dataset,
        "data_dir": f.data_dir,
        "image_dir": f.image_dir,
        "split": f.split,
        "image_size": image_size,
        "attacks": list(f.attacks),
        "eps": eps,
        "eps_sweep": list(f.eps_sweep),
        "num_examples": f.num_examples,
        "batch_size": f.batch_size,
        "seed": f.seed,
        "adaptive": f.adaptive,
        "eot_draws": f.eot_draws,
        "source_model_dir": [os.path.abspath(p) for p in f.source_model_dir],
        "source_model_digest": [savedmodel.model_digest(p) for p in f.source_model_dir],
        "package_version": at2l_tf.__version__,
    }
    for spec in attack_specs_from_flags(f, eps):
        entry = attacks.get_entry(spec.name)
        flag_of = {p.name: entry.flag_name(p) for p in entry.user_params}
        for name, value in spec.params.items():
            if name not in ("eps", "seed"):
                ident[flag_of.get(name, f"{spec.name}_{name}")] = value
    return ident


def open_workdir(workdir, identity):
    """The `ResultStore` of `workdir` for an evaluation of `identity`.

    Raises:
        ConfigError: one line naming the first setting that differs when the
            workdir holds another evaluation, or when it cannot be written.
            Nothing in it is changed then.
    """
    store = evaluation.store.ResultStore(workdir)
    try:
        recorded = store.identity()
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"workdir {workdir} holds an unreadable {evaluation.store.IDENTITY_FILE} ({e}); "
            "delete it to start again"
        ) from None
    if recorded is not None:
        # Every difference, on one line: a changed flag may change others
        # (--pgd_steps changes the default step size).
        same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
        diffs = [
            f"{k}: {recorded.get(k)!r} -> {identity.get(k)!r}"
            for k in sorted(set(recorded) | set(identity))
            if not same(recorded.get(k), identity.get(k))
        ]
        if diffs:
            raise ConfigError(
                f"workdir {workdir} holds an evaluation with other settings ({'; '.join(diffs)}); "
                "use another --workdir, or delete it to start again"
            )
    backup.check_writable(workdir)
    store.start(identity)
    return store


def evaluate_from_flags(f):
    """Runs the command on parsed flags: validate, load, attack, print, write.

    Args:
        f: parsed flag values (see `define_flags`).

    Returns:
        The report dict (also written to `--output_json` when given); with
        `--show`, the records printed.

    Raises:
        errors.Interrupted: Ctrl-C; the results so far are in the workdir, and
            the same command continues from them.
    """
    if f.show:
        print(evaluation.record.format_records(f.show))
        return evaluation.record.read_records(f.show)
    validate_flags(f)
    # MultiWorkerMirroredStrategy first: it must exist before any other TensorFlow op.
    worker = distribute.worker_from_env(f.strategy)
    strategy = distribute.make_strategy(f.strategy) if f.strategy == "multi_worker" else None
    started = time.time()
    keras.utils.set_random_seed(f.seed)
    target = savedmodel.load_classifier(f.model_dir)
    meta = target.metadata
    dataset = f.dataset or ("image_folder" if f.image_dir else meta.get("dataset"))
    image_dir = f.image_dir or (meta.get("config") or {}).get("data", {}).get("image_dir")
    if dataset is None:
        raise ConfigError(
            f"--dataset is required: the model at {target.path} records no dataset in its metadata"
        )
    image_size = f.image_size or target.input_shape[0] or data.DEFAULT_IMAGE_SIZE
    spec = data.get_spec(dataset, image_size, image_dir)
    check_compatible(target, spec)
    if dataset == "image_folder":  # Label k must name the same class for the model and the folder.
        image_folder.check_class_names(target.class_names, spec, target.path)
    sources = {}
    for path in f.source_model_dir:
        source = savedmodel.load_classifier(path)
        check_compatible(source, spec)
        sources[path] = source.model_fn

    eps = resolve_eps(f, dataset, image_dir)
    specs = attack_specs_for(f, eps, target, sources)
    workdir = resolve_workdir(f)
    store = None
    if workdir:
        store = open_workdir(workdir, evaluation_identity(f, target, dataset, image_size, eps))
    for attack in specs:
        steps, step_size = attack.params.get("steps"), attack.params.get("step_size")
        if steps and step_size is not None and steps * step_size < eps and worker.is_chief:
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
            image_dir=image_dir,
        ),
        batch_size=f.batch_size,
        cache=False,
    )
    partition = evaluation.Partition()
    if worker.num_workers > 1:
        partition = evaluation.Partition(
            index=worker.shard_index,
            count=worker.num_workers,
            gather=lambda payload: distribute.all_gather_bytes(strategy, worker, payload),
            name=f"{worker.name}: ",
        )
    mode = f"transfer from {', '.join(f.source_model_dir)}" if sources else "white-box"
    _log(
        f"evaluating {target.path} on the first {f.num_examples} {dataset} {f.split} images "
        f"({mode}): {', '.join(f.attacks) or 'clean only'}, eps={eps:.4g}"
        + (f"; worker {worker.name} of {worker.num_workers}" if worker.num_workers > 1 else "")
        + (f"; results kept in {workdir}" if workdir else "")
    )
    try:
        report = evaluation.robustness_report(
            target.model_fn,
            ds,
            specs,
            sources=sources or None,
            num_examples=f.num_examples,
            verbose=f.verbose,
            per_example=True,
            store=store,
            partition=partition,
        )
        sweep = parse_eps_sweep(f.eps_sweep)
        curve = None
        if sweep:
            stem = f.curve_output or (
                os.path.splitext(f.output_json)[0] + "_curve" if f.output_json else "robustness_curve"
            )
            curve = run_eps_sweep(f, target, ds, sweep, sources, stem, workdir, partition,
                                  write=worker.is_chief)
    except KeyboardInterrupt:
        if workdir:
            kept = (f"the results of every finished batch and attack are in {workdir}; run the "
                    "same command again to continue")
        else:
            kept = "nothing was kept (no --workdir or --output_json)"
        raise errors.Interrupted(f"interrupted; {kept}") from None
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
    if not worker.is_chief:
        return report  # The chief prints, writes and records.
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
    if curve is not None:
        report["eps_sweep"] = curve
    report["seconds"] = round(time.time() - started, 1)
    print(evaluation.format_report(report))
    for flag in report.get("flags", []):
        _log(f"warning: {flag['message']}")
    if f.output_json:
        fileio.atomic_write_json(f.output_json, report)
        _log(f"wrote {f.output_json}")
    if f.record:
        record = evaluation.record.make_record(
            report, evaluated_by="evaluate", dataset=dataset, split=f.split, eps=eps, seed=f.seed,
            preprocessing=target.preprocessing_name, adaptive=f.adaptive,
        )
        _log(f"recorded the robustness in {evaluation.record.write_record(target.path, record)}")
    return report


def run_eps_sweep(f, target, ds, sweep, sources, stem, workdir=None, partition=None, write=True):
    """Accuracy against eps for each attack of `--attacks` and their worst case.

    Each eps keeps its results in `<workdir>/sweep-NN/` (resumable as the main
    report). Writes `<stem>.csv` and `<stem>.png` (if `write`) and returns
    `{"eps": [...], "curves": {label: [accuracy, ...]}, "csv": path, "png": path}`.
    """
    curves = {}
    for i, eps in enumerate(sweep):
        if write:
            _log(f"eps sweep {i + 1}/{len(sweep)}: eps={eps:.4g}")
        store = None
        if workdir:
            store = evaluation.store.ResultStore(os.path.join(workdir, f"sweep-{i:02d}"))
            store.start({"eps": eps})  # The workdir's identity covers the sweep.
        rep = evaluation.robustness_report(
            target.model_fn,
            ds,
            attack_specs_for(f, eps, target, sources),
            sources=sources or None,
            num_examples=f.num_examples,
            verbose=f.verbose,
            store=store,
            partition=partition,
        )
        for label, entry in rep["attacks"].items():
            curves.setdefault(label, []).append(entry["accuracy"])
        worst = rep["robust_accuracy"]
        curves.setdefault(evaluation.plots.WORST_CASE, []).append(
            rep["clean_accuracy"] if worst is None else worst
        )
    # Worst case last, so that it is drawn on top and is the CSV's last column.
    curves[evaluation.plots.WORST_CASE] = curves.pop(evaluation.plots.WORST_CASE)
    csv_path, png_path = stem + ".csv", stem + ".png"
    if write:
        csv_path = evaluation.plots.write_curve_csv(csv_path, sweep, curves)
        png_path = evaluation.plots.plot_curves(
            png_path, sweep, curves, title=os.path.basename(f.model_dir.rstrip("/")),
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
