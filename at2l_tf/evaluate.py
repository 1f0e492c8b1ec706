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
    python -m at2l_tf.evaluate --model_dir=savedmodels/mnist_reference \
        --attack_precision=bfloat16      # attacks search in bfloat16, verdicts float32

**From Python.** The command maps its flags onto an `EvaluationConfig`
(`at2l_tf.evaluation.config`: one small dataclass per concern, each checking
its own fields) and calls `evaluate(config)`, which returns the report:

    from at2l_tf import evaluate as ev

    report = ev.evaluate(ev.EvaluationConfig(
        model=ev.ModelSection(model_dir="savedmodels/mnist_reference"),
        images=ev.ImagesSection(num_examples=1000, batch_size=250),
        attacks=ev.AttacksSection(names=("apgd_ce", "apgd_t"), eps=0.3,
                                  params={"apgd_ce": {"steps": 50}}),
        output=ev.OutputSection(output_json="aa.json", verbose=0),
    ))
    print(report["robust_accuracy"])

`evaluate` runs in phases (config → strategy → models → attacks → workdir →
data → measure → finish), each a function of this module.

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

**Attack precision.** `--attack_precision=bfloat16` runs the attacks' forward
and backward passes on a bfloat16 copy of the classifier (the same weights;
the defence layer stays float32 in front of it), while the projection onto the
eps-ball, the bookkeeping and every verdict — clean, each attack, each
AutoAttack stage, the worst case — are the float32 model's: APGD counts an
iterate as fooling only when the float32 model misclassifies it, Square keeps a
candidate only when its float32 margin is better (`attacks.search`). `auto` is
bfloat16 on a CPU with native bfloat16 (`avx512_bf16`, `amx_bf16`), else
float32; the default is float32. The JSON says `attack_precision`, and each
attack's `search`: `rejected`, the candidates that fooled the copy but not the
float32 model (not counted; per AutoAttack stage too), and
`fooled_search_only`, the returned examples that fool only the copy (counted
robust). A SavedModel is copied from the architecture its metadata names
(exports of `train`); for other exports, evaluate the `.keras` file.

**Resume.** Each batch's results, per attack (per example: right or wrong,
perturbation norms; the time and seed), are written as they come to a work
directory, `--workdir` (default beside `--output_json`: `report.json` ->
`report.work/`; `--workdir=''` keeps nothing), one small file each, atomically.
The same command started again continues where a killed run stopped and ends
with the same JSON as an uninterrupted run (but for the times: `seconds` at the
top, per attack, and per AutoAttack stage); Ctrl-C stops at once, keeps what is
finished and exits with status 130. A workdir is continued only by the same
evaluation: another model (version or weights), other images, another eps,
seed, attack parameter or attack precision is refused with one line naming every difference,
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

import dataclasses
import os
import time

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
import at2l_tf
from at2l_tf import attacks, data, errors, evaluation, fileio, image_folder, precision, savedmodel
from at2l_tf import identity as run_identity
from at2l_tf.log import log as _log
from at2l_tf.attacks import iterative
from at2l_tf.attacks.search import SearchModel
from at2l_tf.errors import ConfigError
from at2l_tf.evaluation.config import (  # noqa: F401  (re-exported: the Python API)
    ATTACK_PRECISIONS, DEFAULT_ATTACKS, STRATEGIES, AttacksSection, EvaluationConfig,
    ImagesSection, ModelSection, OutputSection,
)
from at2l_tf.training import backup, distribute

import keras  # noqa: E402  (after `cli`, which quiets TensorFlow's start-up logs)

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
        (string, "attack_precision", "float32", "Where the attacks' forward and backward passes "
         "run: float32 | bfloat16 (a bfloat16 copy of the classifier, same weights) | auto "
         "(bfloat16 on a CPU with native bfloat16). Every verdict (clean, per attack and stage, "
         "worst case) is the float32 model's."),
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


# --- The command: flags -> config. ---------------------------------------------------------


def config_from_flags(f):
    """The `EvaluationConfig` of parsed flags (not validated: `evaluate` validates).

    Every set `--<attack>_<param>` flag goes into `attacks.params` (also for
    attacks not in `--attacks`, so that a bad value is refused all the same).

    Raises:
        ConfigError: an `--eps_sweep` value that is not a number.
    """
    params = {}
    for flag, entry, param in attack_flags():
        value = f[flag].value
        if value is not None:
            params.setdefault(entry.name, {})[param.name] = value
    return EvaluationConfig(
        model=ModelSection(model_dir=f.model_dir, source_model_dirs=tuple(f.source_model_dir)),
        images=ImagesSection(
            dataset=f.dataset, data_dir=f.data_dir, image_dir=f.image_dir, split=f.split,
            image_size=f.image_size,
            num_examples=f.num_examples, batch_size=f.batch_size,
        ),
        attacks=AttacksSection(
            names=tuple(f.attacks), eps=f.eps, eps_sweep=tuple(parse_eps_sweep(f.eps_sweep)),
            seed=f.seed, params=params, adaptive=f.adaptive, eot_draws=f.eot_draws,
            precision=f.attack_precision,
        ),
        output=OutputSection(
            output_json=f.output_json, workdir=f.workdir, curve_output=f.curve_output,
            record=f.record, verbose=f.verbose,
        ),
        strategy=f.strategy,
    )


def parse_eps_sweep(values):
    """`--eps_sweep` as floats (checked by `AttacksSection.validate`)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise ConfigError(f"eps_sweep values must be numbers, received {v!r}") from None
    return out


def evaluate_from_flags(f):
    """Runs the command on parsed flags: `--show`, or `evaluate(config_from_flags(f))`.

    Args:
        f: parsed flag values (see `define_flags`).

    Returns:
        The report dict (see `evaluate`); with `--show`, the records printed.
    """
    if f.show:
        print(evaluation.record.format_records(f.show))
        return evaluation.record.read_records(f.show)
    return evaluate(config_from_flags(f))


# --- The library: config -> report. --------------------------------------------------------


@dataclasses.dataclass
class LoadedModels:
    """Phase 2's result: the target, the transfer sources, the data spec, and
    the reduced-precision copies the attacks search on (if any).

    Attributes:
        target: the evaluated `savedmodel.Classifier` (float32).
        sources: `{path: model_fn}` of transfer sources (float32), or `{}`.
        dataset: the dataset's name (flag, else the export's metadata).
        image_dir: the folder of an `image_folder` dataset (flag, else the
            one the model was trained on), or `None`.
        image_size: the image side used to load the data.
        spec: `data.get_spec(dataset, image_size)`.
        precision: the resolved `precision.Precision` of the attacks' search.
        search: `(model_fn, net_fn)` of the target's bfloat16 copy, or `None`
            for a float32 search.
        search_sources: `{path: model_fn}` of the sources' bfloat16 copies.
    """

    target: object
    sources: dict
    dataset: str
    image_size: int
    spec: object
    precision: object
    image_dir: object = None
    search: object = None
    search_sources: dict = dataclasses.field(default_factory=dict)


def evaluate(config):
    """Measures a model's robustness as `config` says; returns the report.

    Phases, in order (one way, as `experiment.run`):

    1. **config**: `config.validate()`, before anything is loaded;
    2. **strategy**: `multi_worker` first (it must exist before any other
       TensorFlow op), then the seed;
    3. **models** (`load_models`): the target, the sources, the dataset's spec,
       the attacks' precision and the bfloat16 copies it needs;
    4. **attacks** (`attack_specs_for`): one `AttackSpec` per attack, adaptive
       through a defence layer, on a `SearchModel` when the search is bfloat16;
    5. **workdir** (`open_workdir`): refuse another evaluation's results;
    6. **data**: the first `num_examples` images of the split;
    7. **measure**: `evaluation.robustness_report` (and the eps sweep);
    8. **finish** (chief only): masking checks, the table on stdout, the JSON,
       the robustness record.

    Args:
        config: an `EvaluationConfig`.

    Returns:
        The report dict (also written to `config.output.output_json`); on a
        worker other than the chief, its report without the chief's additions.

    Raises:
        ConfigError, DatasetError, FileNotFoundError, ModelLoadError: bad
            input, one line naming it; nothing is written.
        errors.Interrupted: Ctrl-C; the results so far are in the workdir, and
            the same call continues from them.
    """
    # 1. Config.
    config.validate()
    a, out = config.attacks, config.output
    # 2. Strategy: MultiWorkerMirroredStrategy first, before any other TensorFlow op.
    worker = distribute.worker_from_env(config.strategy)
    strategy = distribute.make_strategy(config.strategy) if config.strategy == "multi_worker" else None
    started = time.time()
    keras.utils.set_random_seed(a.seed)
    # 3. Models.
    loaded = load_models(config)
    target, dataset = loaded.target, loaded.dataset
    # 4. Attacks.
    eps = resolve_eps(config, dataset, loaded.image_dir)
    specs = attack_specs_for(config, eps, loaded)
    # 5. Workdir.
    workdir = out.resolved_workdir()
    store = None
    if workdir:
        store = open_workdir(workdir, evaluation_identity(config, loaded, eps))
    if worker.is_chief:
        _warn_weak_attacks(specs, eps)
        if loaded.precision.warning:
            _log(f"warning: {loaded.precision.warning}")
    # 6. Data.
    ds = evaluation_data(config, loaded)
    partition = evaluation.Partition()
    if worker.num_workers > 1:
        partition = evaluation.Partition(
            index=worker.shard_index,
            count=worker.num_workers,
            gather=lambda payload: distribute.all_gather_bytes(strategy, worker, payload),
            name=f"{worker.name}: ",
        )
    mode = (f"transfer from {', '.join(config.model.source_model_dirs)}"
            if loaded.sources else "white-box")
    names = ", ".join(a.names) or "clean only"
    search_note = "" if loaded.search is None else "; attacks search in bfloat16, verdicts float32"
    _log(
        f"evaluating {target.path} on the first {config.images.num_examples} {dataset} "
        f"{config.images.split} images ({mode}): {names}, eps={eps:.4g}{search_note}"
        + (f"; worker {worker.name} of {worker.num_workers}" if worker.num_workers > 1 else "")
        + (f"; results kept in {workdir}" if workdir else "")
    )
    # 7. Measure.
    try:
        report = evaluation.robustness_report(
            target.model_fn,
            ds,
            specs,
            sources=_attack_sources(loaded) or None,
            num_examples=config.images.num_examples,
            verbose=out.verbose,
            per_example=True,
            store=store,
            partition=partition,
        )
        curve = None
        if a.eps_sweep:
            curve = run_eps_sweep(config, loaded, ds, list(a.eps_sweep), out.curve_stem(), workdir,
                                  partition, write=worker.is_chief)
    except KeyboardInterrupt:
        if workdir:
            kept = (f"the results of every finished batch and attack are in {workdir}; run the "
                    "same command again to continue")
        else:
            kept = "nothing was kept (no --workdir or --output_json)"
        raise errors.Interrupted(f"interrupted; {kept}") from None
    # 8. Finish.
    return finish(config, loaded, report, ds, eps, curve, worker, started)


def load_models(config):
    """Phase 3: the target and sources (float32), the data spec, and the bfloat16
    copies the attacks search on when `config.attacks.precision` asks for them.

    Raises:
        ConfigError: no dataset known; a model that does not take the
            dataset's images or classes.
        ModelLoadError: a model that cannot be read, or (bfloat16) copied.
    """
    target = savedmodel.load_classifier(config.model.model_dir)
    meta = target.metadata
    dataset = config.images.dataset or (image_folder.NAME if config.images.image_dir else meta.get("dataset"))
    image_dir = config.images.image_dir or (meta.get("config") or {}).get("data", {}).get("image_dir")
    if dataset is None:
        raise ConfigError(
            f"--dataset is required: the model at {target.path} records no dataset in its metadata"
        )
    image_size = config.images.image_size or target.input_shape[0] or data.DEFAULT_IMAGE_SIZE
    spec = data.get_spec(dataset, image_size, image_dir)
    check_compatible(target, spec)
    if dataset == image_folder.NAME:  # Label k must name the same class for the model and the folder.
        image_folder.check_class_names(target.class_names, spec, target.path)
    source_models = {}
    for path in config.model.source_model_dirs:
        source = savedmodel.load_classifier(path)
        check_compatible(source, spec)
        source_models[path] = source
    prec = precision.resolve_attack_precision(config.attacks.precision)
    loaded = LoadedModels(
        target=target,
        sources={p: s.model_fn for p, s in source_models.items()},
        dataset=dataset,
        image_size=image_size,
        spec=spec,
        precision=prec,
        image_dir=image_dir,
    )
    if prec.mixed:
        if source_models:
            loaded.search_sources = {
                p: savedmodel.search_fns(s, prec.policy)[0] for p, s in source_models.items()
            }
        else:
            loaded.search = savedmodel.search_fns(target, prec.policy)
    return loaded


def resolve_eps(config, dataset, image_dir=None):
    """`config.attacks.eps`, or the dataset's default radius."""
    eps = config.attacks.eps
    return data.get_spec(dataset, image_dir=image_dir).default_eps if eps is None else eps


def attack_specs(attacks_section, eps):
    """One `AttackSpec` per attack of `attacks_section`, at radius `eps`.

    Each attack gets `eps` and `seed` if it takes them, and its own parameters;
    unset ones resolve to the function's defaults here (`step_size=None` stays
    `None`: it depends on eps and steps, and the attack computes it), so the
    report records the values used.

    Returns:
        A list of `evaluation.AttackSpec`.
    """
    specs = []
    for name in attacks_section.names:
        entry = attacks.get_entry(name)
        params = {}
        if "eps" in entry.params:
            params["eps"] = eps
        if "seed" in entry.params:
            params["seed"] = attacks_section.seed
        for param in entry.user_params:
            params[param.name] = attacks_section.value(name, param)
        if "step_size" in params and "steps" in params:  # Record the iterative default used.
            params["step_size"] = iterative.default_step(eps, params["steps"], params["step_size"])
        specs.append(evaluation.AttackSpec(name, {k: v for k, v in params.items() if v is not None}))
    return specs


def attack_specs_for(config, eps, loaded):
    """Phase 4: `attack_specs`, then, white-box, each attack on what it must
    differentiate (`evaluation.adaptive.adapt`: BPDA / EOT through the target's
    defence layer, LS-PGA behind the thermometer); with a bfloat16 search,
    each on a `SearchModel` pairing the bfloat16 function with its float32
    twin (which gives the verdicts)."""
    specs = attack_specs(config.attacks, eps)
    if loaded.sources:
        return specs  # The sources' copies: `_attack_sources`.
    target, a = loaded.target, config.attacks
    return evaluation.adaptive.adapt(
        specs, layer=target.preprocessing, net_fn=target.net_fn, model_fn=target.model_fn,
        mode=a.adaptive, eot_draws=a.eot_draws, search=loaded.search,
    )


def _attack_sources(loaded):
    """`{path: model_fn}` the attacks craft on: the sources, or their `SearchModel`s."""
    if not loaded.search_sources:
        return loaded.sources
    return {p: SearchModel(loaded.search_sources[p], fn) for p, fn in loaded.sources.items()}


def _warn_weak_attacks(specs, eps):
    for attack in specs:
        steps, step_size = attack.params.get("steps"), attack.params.get("step_size")
        if steps and step_size is not None and steps * step_size < eps:
            _log(
                f"warning: {attack.name} makes {steps} steps of {step_size:.4g}, which cannot "
                f"reach eps={eps:.4g} from x: a weak attack; raise its steps or step size"
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


def evaluation_identity(config, loaded, eps):
    """The settings that decide an evaluation's figures, as a flat dict keyed by flag name.

    A workdir holding results of another identity is refused. Left out: where
    the outputs go (`--output_json`, `--workdir`, `--curve_output`), how the
    work is run or shown (`--strategy`, `--verbose`) and `--record`; each
    attack's parameters are in as they resolve (unset flags: the attack's
    defaults); the model is in by its resolved path and digest
    (`savedmodel.model_digest`), so a new version under the same export root
    is another evaluation; the attacks' precision is in as it resolves
    (`auto` is bfloat16 on one CPU and float32 on another).
    """
    target, a, im = loaded.target, config.attacks, config.images
    sources = config.model.source_model_dirs
    ident = {
        "model_dir": os.path.abspath(target.path),
        "model_digest": savedmodel.model_digest(target.path),
        "dataset": loaded.dataset,
        "data_dir": im.data_dir,
        "image_dir": loaded.image_dir,
        "split": im.split,
        "image_size": loaded.image_size,
        "attacks": list(a.names),
        "eps": eps,
        "eps_sweep": [float(e) for e in a.eps_sweep],
        "num_examples": im.num_examples,
        "batch_size": im.batch_size,
        "seed": a.seed,
        "adaptive": a.adaptive,
        "eot_draws": a.eot_draws,
        "attack_precision": "float32" if not loaded.precision.mixed else "bfloat16",
        "source_model_dir": [os.path.abspath(p) for p in sources],
        "source_model_digest": [savedmodel.model_digest(p) for p in sources],
        "package_version": at2l_tf.__version__,
    }
    for spec in attack_specs(a, eps):
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
        run_identity.require_same(recorded, identity, where=f"workdir {workdir}", what="an evaluation")
    backup.check_writable(workdir)
    store.start(identity)
    return store


def evaluation_data(config, loaded):
    """Phase 6: the first `num_examples` images of the split, batched, as the
    model was trained (the validation split depends on its validation size)."""
    im = config.images
    validation_size = (loaded.target.metadata.get("config") or {}).get("data", {}).get(
        "validation_size", data.DEFAULT_VALIDATION_SIZE
    )
    return data.make_pipeline(
        data.load(
            loaded.dataset,
            im.split,
            data_dir=im.data_dir,
            validation_size=validation_size,
            image_size=loaded.image_size,
            max_examples=im.num_examples,
            image_dir=loaded.image_dir,
        ),
        batch_size=im.batch_size,
        cache=False,
    )


def finish(config, loaded, report, ds, eps, curve, worker, started):
    """Phase 8: the report's settings; on the chief, the masking checks, the
    table on stdout, the JSON and the robustness record."""
    a, out, target = config.attacks, config.output, loaded.target
    meta = target.metadata
    per_example = report.pop("per_example")
    sources = config.model.source_model_dirs
    report.update(
        model_dir=config.model.model_dir,
        model_path=target.path,
        dataset=loaded.dataset,
        split=config.images.split,
        eps=eps,
        seed=a.seed,
        source_model_dirs=list(sources),
        preprocessing=target.preprocessing_name,
        adaptive=None if sources else a.adaptive,
    )
    if loaded.precision.mixed:
        report["attack_precision"] = {
            "search": "bfloat16", "verdicts": "float32", "choice": loaded.precision.choice,
            "reason": loaded.precision.reason,
        }
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
    if out.output_json:
        fileio.atomic_write_json(out.output_json, report)
        _log(f"wrote {out.output_json}")
    if out.record:
        record = evaluation.record.make_record(
            report, evaluated_by="evaluate", dataset=loaded.dataset, split=config.images.split,
            eps=eps, seed=a.seed, preprocessing=target.preprocessing_name, adaptive=a.adaptive,
        )
        _log(f"recorded the robustness in {evaluation.record.write_record(target.path, record)}")
    return report


def run_eps_sweep(config, loaded, ds, sweep, stem, workdir=None, partition=None, write=True):
    """Accuracy against eps for each attack of `config` and their worst case.

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
            loaded.target.model_fn,
            ds,
            attack_specs_for(config, eps, loaded),
            sources=_attack_sources(loaded) or None,
            num_examples=config.images.num_examples,
            verbose=config.output.verbose,
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
            png_path, sweep, curves, title=os.path.basename(config.model.model_dir.rstrip("/")),
            num_examples=config.images.num_examples,
        )
        _log(f"wrote {csv_path} and {png_path}")
    return {"eps": sweep, "curves": curves, "csv": csv_path, "png": png_path}


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    evaluate_from_flags(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "evaluate")
