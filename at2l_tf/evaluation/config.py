"""The configuration of one robustness evaluation: small dataclasses, one per concern.

`EvaluationConfig` is what `at2l_tf.evaluation.run.evaluate(config)` runs and what
the `evaluate` command builds from its flags. Each section checks its own
fields (`validate()`); `EvaluationConfig.validate` adds the rules that span
several, and checks every value before anything is loaded. Errors are
`ConfigError`s (`DatasetError` for an unknown dataset or split,
`FileNotFoundError` for a missing model) naming the bad value as its flag.

Not to be confused with `at2l_tf.config.EvalConfig`: that is the train
command's final check, a section of an `ExperimentConfig` (a few attacks on the
test split, at the training eps); this is the standalone, resumable
measurement of any exported model, with every attack parameter. The two share
the attack registry and `evaluation.robustness_report`, not their fields.
"""

import dataclasses
import os
from typing import Optional

from at2l_tf import attacks, data, precision
from at2l_tf.errors import ConfigError
from at2l_tf.errors import at_least as _at_least
from at2l_tf.evaluation import adaptive as adaptive_lib

# The attacks run by default: the paper's FGSM, the PGD-40 figure the project
# used to report, and AutoAttack, whose worst case is the figure to quote.
DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack")
STRATEGIES = ("default", "multi_worker")
# Where the attacks' forward and backward passes run (`evaluation.mixed`);
# every verdict is float32 whatever this says.
ATTACK_PRECISIONS = precision.ATTACK_CHOICES


@dataclasses.dataclass
class ModelSection:
    """The model to evaluate, and the models to craft on (transfer).

    Attributes:
        model_dir: SavedModel export (root or version directory) or `.keras` file.
        source_model_dirs: craft each attack on these models instead and
            transfer the examples to `model_dir` (black-box, the paper's Fig. 2).
    """

    model_dir: Optional[str] = None
    source_model_dirs: tuple = ()

    def validate(self):
        if not self.model_dir:
            raise ConfigError("--model_dir is required (or --show=MODEL_DIR to print a record)")
        return self

    def check_paths(self):
        """Raises `FileNotFoundError` for a model path that does not exist."""
        for path in [self.model_dir, *self.source_model_dirs]:
            if not os.path.exists(path):
                raise FileNotFoundError(f"model path does not exist: {path}")


@dataclasses.dataclass
class ImagesSection:
    """Which images: the first `num_examples` of `split`, in batches.

    Attributes:
        dataset: `mnist`, `cifar10`, `cats_vs_dogs`; `None`: the one the
            export's metadata records.
        data_dir: TFDS data directory.
        image_dir: a folder of class subfolders (dataset `image_folder`, which
            it implies); `None`: the one the model was trained on, if any.
        split: `train`, `validation` or `test`.
        image_size: Cats vs Dogs image side; `None`: the model's input.
        num_examples: evaluate the first N images of the split.
        batch_size: images per attack batch.
    """

    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    image_dir: Optional[str] = None
    split: str = "test"
    image_size: Optional[int] = None
    num_examples: int = 1000
    batch_size: int = 128

    def validate(self):
        _at_least("num_examples", self.num_examples, 1)
        _at_least("batch_size", self.batch_size, 1)
        if self.split not in data.SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; known splits: {', '.join(data.SPLITS)}")
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 8)
        if self.dataset is not None and self.dataset != "image_folder":
            data.get_spec(self.dataset)  # Unknown names fail here.
        if self.image_dir or self.dataset == "image_folder":
            # A missing folder, or one with fewer than two classes, fails here.
            data.get_spec("image_folder", self.image_size or 8, self.image_dir)
        return self


@dataclasses.dataclass
class AttacksSection:
    """The attacks, their radius and parameters, and how they run.

    Attributes:
        names: registry names, run in this order (empty: clean accuracy only).
        eps: L-inf radius; `None`: the dataset's default (MNIST 0.3, else 8/255).
        eps_sweep: also measure at each of these radii (increasing).
        seed: seed of every attack's randomness.
        params: `{attack: {param: value}}`, the user-set parameters
            (`Param`s of the registry); unset ones are the attack's defaults.
        adaptive: gradient attacks on a model with a defence layer:
            `auto` | `none` | `bpda` | `eot` (`evaluation.adaptive`).
        eot_draws: random draws averaged by EOT.
        precision: where the attacks' forward and backward passes run:
            `float32`, `bfloat16` (a bfloat16 copy of the classifier, the same
            weights) or `auto` (bfloat16 on a CPU with native bfloat16). Every
            verdict is the float32 model's (`evaluation.mixed`).
    """

    names: tuple = DEFAULT_ATTACKS
    eps: Optional[float] = None
    eps_sweep: tuple = ()
    seed: int = 0
    params: dict = dataclasses.field(default_factory=dict)
    adaptive: str = "auto"
    eot_draws: int = adaptive_lib.DEFAULT_EOT_DRAWS
    precision: str = "float32"

    def validate(self):
        for name in self.names:
            attacks.get_entry(name)  # Lists the known attacks.
        names = list(self.names)
        if len(set(names)) != len(names):
            dup = next(a for a in names if names.count(a) > 1)
            raise ConfigError(f"attack {dup!r} is listed twice in --attacks={','.join(names)}")
        if self.eps is not None:
            check_eps("eps", self.eps)
        sweep = [float(e) for e in self.eps_sweep]
        for i, eps in enumerate(sweep):
            check_eps("eps_sweep", eps)
            if i and eps <= sweep[i - 1]:
                raise ConfigError(
                    f"eps_sweep must increase, received {','.join(str(e) for e in self.eps_sweep)}"
                )
        if sweep and not names:
            raise ConfigError("--eps_sweep needs at least one attack in --attacks")
        adaptive_lib.check_mode(self.adaptive)
        _at_least("eot_draws", self.eot_draws, 1)
        for name, values in self.params.items():
            entry = attacks.get_entry(name)
            declared = {p.name: p for p in entry.user_params}
            for param, value in values.items():
                if param not in declared:
                    raise ConfigError(
                        f"attack {name!r} has no parameter {param!r}; it has: "
                        f"{', '.join(declared) or 'none'}"
                    )
                declared[param].check(value, entry.flag_name(declared[param]))
        if self.precision not in ATTACK_PRECISIONS:
            raise ConfigError(
                f"attack_precision must be one of {', '.join(ATTACK_PRECISIONS)}, "
                f"received attack_precision={self.precision!r}"
            )
        return self

    def value(self, name, param):
        """The value of `param` (a `Param`) of attack `name`: set, else the attack's default."""
        value = self.params.get(name, {}).get(param.name)
        return attacks.get_entry(name).default(param.name) if value is None else value


@dataclasses.dataclass
class OutputSection:
    """Where the results go and how progress is shown.

    Attributes:
        output_json: also write the report here (atomically).
        workdir: keep each batch's results here, so that the same evaluation
            continues a killed run; `None`: beside `output_json`
            (`<name>.work/`), or nothing without it; `""`: nothing.
        curve_output: path stem of the eps sweep's `.csv`/`.png`; `None`:
            beside `output_json`, else `./robustness_curve`.
        record: also write the summary into the SavedModel version's
            `assets/robustness.json` (white-box only).
        verbose: 0 silent; 1 progress on stderr (a bar on a terminal, else
            lines); 2 lines even on a terminal.
    """

    output_json: Optional[str] = None
    workdir: Optional[str] = None
    curve_output: Optional[str] = None
    record: bool = False
    verbose: int = 1

    def validate(self):
        return self

    def resolved_workdir(self):
        """`workdir`; unset, `<output_json without .json>.work` beside
        `output_json` (or `None`, nothing kept, without it); `''`: `None`."""
        if self.workdir is not None:
            return self.workdir or None
        if self.output_json:
            return os.path.splitext(self.output_json)[0] + ".work"
        return None

    def curve_stem(self):
        """The eps sweep's path stem (see `curve_output`)."""
        if self.curve_output:
            return self.curve_output
        if self.output_json:
            return os.path.splitext(self.output_json)[0] + "_curve"
        return "robustness_curve"


@dataclasses.dataclass
class EvaluationConfig:
    """One evaluation: the model, the images, the attacks, the outputs and the strategy.

    Attributes:
        strategy: `default` (one process) or `multi_worker` (the workers of
            `TF_CONFIG` share the batches; the chief writes the outputs).
    """

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    images: ImagesSection = dataclasses.field(default_factory=ImagesSection)
    attacks: AttacksSection = dataclasses.field(default_factory=AttacksSection)
    output: OutputSection = dataclasses.field(default_factory=OutputSection)
    strategy: str = "default"

    def validate(self):
        """Checks every value that can be checked without loading anything.

        Raises:
            ConfigError: naming the first bad value.
            DatasetError: an unknown dataset or split.
            FileNotFoundError: a model path that does not exist.
        """
        self.model.validate()
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r} for evaluate; known: {', '.join(STRATEGIES)}"
            )
        if self.output.record and self.model.source_model_dirs:
            raise ConfigError("--record records a white-box evaluation: drop --source_model_dir")
        if self.output.record and os.path.isfile(self.model.model_dir):
            raise ConfigError(
                f"--record writes into a SavedModel version directory; {self.model.model_dir} is a file"
            )
        self.attacks.validate()
        if self.model.source_model_dirs and any(
            attacks.get_entry(a).inputs != "images" for a in self.attacks.names
        ):
            raise ConfigError("attacks behind a defence layer (ls_pga) are white-box: drop --source_model_dir")
        self.images.validate()
        self.output.validate()
        self.model.check_paths()
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


def check_eps(name, eps):
    """Raises `ConfigError` unless `0 <= eps <= 1`."""
    _at_least(name, eps, 0.0)
    if eps > 1:
        raise ConfigError(f"{name} must be <= 1 for images in [0, 1], received {name}={eps}")


__all__ = [
    "ATTACK_PRECISIONS",
    "AttacksSection",
    "DEFAULT_ATTACKS",
    "EvaluationConfig",
    "ImagesSection",
    "ModelSection",
    "OutputSection",
    "STRATEGIES",
    "check_eps",
]
