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
its own fields) and calls `at2l_tf.evaluation.run.evaluate(config)`, which runs
in phases (config → strategy → models → attacks → workdir → data → measure →
finish) and returns the report; that module's docstring has an example. This
module is the command alone: its flags, and their mapping onto the config.

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
float32; the default is float32 (on 10,000 MNIST images the bfloat16 search
was 0.13 points weaker on the main job's model: benchmarks/README.md). The
JSON says `attack_precision`, and each attack's `search`: `rejected`, the
candidates that fooled the copy but not the float32 model (not counted; per
AutoAttack stage too), and `fooled_search_only`, the returned examples that
fool only the copy (counted robust). A SavedModel is copied from the
architecture its metadata names (exports of `train`); for other exports,
evaluate the `.keras` file.

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

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
from at2l_tf import attacks, evaluation
from at2l_tf.errors import ConfigError
from at2l_tf.evaluation.config import (  # noqa: F401  (re-exported: the Python API)
    ATTACK_PRECISIONS, DEFAULT_ATTACKS, STRATEGIES, AttacksSection, EvaluationConfig,
    ImagesSection, ModelSection, OutputSection,
)
from at2l_tf.evaluation.run import evaluate  # Also re-exported: the Python API.
from at2l_tf.evaluation.specs import attack_specs  # noqa: F401  (re-exported)
from at2l_tf.evaluation.workdir import evaluation_identity, open_workdir  # noqa: F401  (re-exported)


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
    define_attack_param_flags(flag_values)
    return flag_values


def define_attack_param_flags(flag_values=flags.FLAGS, note=""):
    """Defines every `--<attack>_<param>` flag (`attack_flags`) on `flag_values`,
    default `None` (the attack's own, shown in the help), `note` ending each help
    text; scripts that run evaluations (`benchmarks/`) pass them on with
    `attack_params_from_flags`."""
    for flag, entry, param in attack_flags():
        default = entry.default(param.name)
        shown = f" (default {default})" if default is not None else ""
        _DEFINE[param.type](
            flag, None, f"{entry.name}: {param.help}{shown}.{note}", flag_values=flag_values
        )


def attack_params_from_flags(f):
    """`{attack: {param: value}}` of the set `--<attack>_<param>` flags of `f`."""
    params = {}
    for flag, entry, param in attack_flags():
        value = f[flag].value
        if value is not None:
            params.setdefault(entry.name, {})[param.name] = value
    return params


def config_from_flags(f):
    """The `EvaluationConfig` of parsed flags (not validated: `evaluate` validates).

    Every set `--<attack>_<param>` flag goes into `attacks.params` (also for
    attacks not in `--attacks`, so that a bad value is refused all the same).

    Raises:
        ConfigError: an `--eps_sweep` value that is not a number.
    """
    params = attack_params_from_flags(f)
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


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    evaluate_from_flags(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "evaluate")
