"""Experiment configuration: one small dataclass per concern, composed.

Every default lives here (dataset-dependent ones, such as eps and the model,
come from `at2l_tf.data.get_spec`). Entry points map flags onto these
dataclasses; `ExperimentConfig.validate()` checks everything before any data is
loaded or any model is built, and raises a `ConfigError` whose message names
the bad value.
"""

import dataclasses
import os
from typing import Optional

from at2l_tf import attacks, data, defenses, losses, models
from at2l_tf.errors import ConfigError
from at2l_tf.training.at2l_model import DEFENSES

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class DataConfig:
    """Which data, and how it is batched.

    Attributes:
        dataset: `mnist` (shipped), `cifar10` or `cats_vs_dogs` (TFDS).
        data_dir: TFDS data directory.
        batch_size: global batch size (split across replicas).
        max_train_examples: cap on training examples (quick runs).
        validation_size: examples carved from train for validation.
        image_size: Cats vs Dogs side length after resizing.
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    batch_size: int = 128
    max_train_examples: Optional[int] = None
    validation_size: int = data.DEFAULT_VALIDATION_SIZE
    image_size: int = data.DEFAULT_IMAGE_SIZE


@dataclasses.dataclass
class AttackConfig:
    """The attack that crafts `x_adv` inside the training step.

    Attributes:
        name: one of `at2l_tf.attacks.TRAINING_ATTACKS`.
        eps: L-inf radius; `None` = the dataset's default (MNIST 0.3, else 8/255).
        steps: iterations of iterative attacks.
        step_size: per-step size; `None` = the attack's default (2.5·eps/steps
            for iterative attacks, 1.25·eps for FGSM-RS).
    """

    name: str = "pgd"
    eps: Optional[float] = None
    steps: int = 5
    step_size: Optional[float] = None

    def params(self):
        """The attack's keyword parameters: those of eps, steps and step_size
        that the attack takes (single-step attacks have no `steps`)."""
        accepted = attacks.get_entry(self.name).params
        values = {"eps": self.eps, "steps": self.steps, "step_size": self.step_size}
        return {k: v for k, v in values.items() if k in accepted}


@dataclasses.dataclass
class PreprocessingConfig:
    """A defence layer in front of the classifier (exported with it).

    Attributes:
        name: `none`, `thermometer` (Buckman et al., 2018; masks gradients:
            train it with the `ls_pga` attack, evaluate it with BPDA) or
            `random_resize_pad` (Xie et al., 2018; random at inference too:
            evaluate it with EOT) or `defense_gan` (Samangouei et al., 2018:
            projection onto a generator's range; the classifier is trained
            without it, on clean data or with TR, and the projection is put in
            front for the final check and the export; evaluate it with BPDA).
        thermometer_levels: levels of the thermometer code (>= 2; 16 as the paper).
        resize_min: smallest random size; `None` = the image size.
        resize_output: canvas size after padding; `None` = image size + ⌈size/7⌉
            (MNIST 28 → [28, 32) → 32, as Xie et al.'s 299 → [299, 331) → 331).
        generator: `defense_gan`: the generator (`.keras` file or a directory
            holding `generator.keras`, e.g. `savedmodels/mnist_generator`).
        dgan_steps: `defense_gan`: L, gradient steps per restart (paper 200).
        dgan_restarts: `defense_gan`: R, random restarts (paper 10).
    """

    name: str = "none"
    thermometer_levels: int = 16
    resize_min: Optional[int] = None
    resize_output: Optional[int] = None
    generator: Optional[str] = None
    dgan_steps: int = 50
    dgan_restarts: int = 4


@dataclasses.dataclass
class TrainConfig:
    """Loss and optimisation.

    Attributes:
        defense: `none`, `at` (Eq. 1), `at2l` (Eq. 2) or `tr` (triplet regulariser).
        lambda1: weight of the adversarial cross-entropy (Eq. 1, 2).
        lambda2: weight of the triplet term (Eq. 2).
        margin: triplet margin α.
        norm: logit distance of the triplet term.
        epochs: passes over the training split.
        learning_rate: Adam learning rate (the initial one under a schedule).
        lr_schedule: `constant`, or `cosine` (Keras' `CosineDecay` from
            `learning_rate` to 0 over all training steps).
        seed: seeds Python, NumPy, TensorFlow, shuffling and negative selection.
        pretrain_epochs: epochs of clean training before the adversarial ones
            (line 1 of Algorithms 1 and 2); they come on top of `epochs`.
        strategy: `auto` (MirroredStrategy if more than one GPU), `default`,
            `mirrored`, `multi_worker` (MultiWorkerMirroredStrategy from `TF_CONFIG`).
        save_every_steps: back up every N steps within an epoch, besides every
            epoch end (0: epoch ends only); a killed run resumes from its backup.
    """

    defense: str = "at2l"
    lambda1: float = 1.0
    lambda2: float = 0.5
    margin: float = 0.5
    norm: str = "linf"
    epochs: int = 3
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    seed: int = 0
    pretrain_epochs: int = 0
    strategy: str = "auto"
    save_every_steps: int = 0


@dataclasses.dataclass
class EnsembleConfig:
    """Ensemble AT²L (Algorithm 2); off while `attacks` is empty.

    Attributes:
        attacks: the attack set A (`training.ensemble.parse_attack_set`:
            `gra`, `opt`, `mix` or names). In ensemble mode the `attack`
            section only sets eps and steps, and the validation attack.
        static_models: paths of pre-trained static models of M (`.keras`
            files or exports); the model being trained is always in M.
        regenerate_every: epochs between regenerations of the adversarial sets
            against the current model.
        cw_steps: Adam steps of C&W inside training (one fixed constant).
        cw_const: the fixed C&W constant c inside training.
    """

    attacks: tuple = ()
    static_models: tuple = ()
    regenerate_every: int = 1
    cw_steps: int = 10
    cw_const: float = 10.0


@dataclasses.dataclass
class EvalConfig:
    """The final robustness check on the test split.

    Attributes:
        attacks: attacks to report (besides clean accuracy); their worst case
            per example is the run's `robust_accuracy`.
        num_examples: test images evaluated (the first ones of the split).
        pgd_steps: PGD iterations of the final check.
        pgd_step_size: PGD step size of the final check.
        autoattack_version: `fast` (APGD-CE + APGD-T, 100 iterations each) or
            `standard` (+ Square, 5,000 queries).
    """

    attacks: tuple = ("fgsm", "pgd", "autoattack")
    num_examples: int = 1000
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    autoattack_version: str = "fast"


@dataclasses.dataclass
class ExperimentConfig:
    """A whole run: data, model, attack, training, evaluation and outputs.

    Attributes:
        model: model registry name; `None` = the dataset's default.
        workdir: where checkpoints, TensorBoard logs and results go.
        export_dir: SavedModel export root (`<export_dir>/<version>/`); `None` skips export.
        serving_input_check: the export's serving signature refuses images with
            NaN, Inf or values outside [0, 1] (`savedmodel.check_image_domain`).
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    preprocessing: PreprocessingConfig = dataclasses.field(default_factory=PreprocessingConfig)
    ensemble: EnsembleConfig = dataclasses.field(default_factory=EnsembleConfig)
    model: Optional[str] = None
    workdir: str = "runs/mnist_at2l"
    export_dir: Optional[str] = "savedmodels/mnist_at2l"
    serving_input_check: bool = True

    @property
    def spec(self):
        return data.get_spec(self.data.dataset, self.data.image_size)

    @property
    def model_name(self):
        return self.model or self.spec.default_model

    @property
    def eps(self):
        return self.spec.default_eps if self.attack.eps is None else self.attack.eps

    def validate(self):
        """Checks every value; raises `ConfigError` naming the first bad one."""
        d, a, t, e = self.data, self.attack, self.train, self.eval
        if d.dataset not in data.available_datasets():
            raise ConfigError(
                f"unknown dataset {d.dataset!r}; known datasets: "
                f"{', '.join(data.available_datasets())}"
            )
        _at_least("batch_size", d.batch_size, 2)  # A triplet needs two examples.
        _at_least("image_size", d.image_size, 8)
        _at_least("validation_size", d.validation_size, 0)
        if d.max_train_examples is not None:
            _at_least("max_train_examples", d.max_train_examples, d.batch_size)
        entry = models.get_entry(self.model_name)
        if entry.dataset != d.dataset:
            raise ConfigError(
                f"model {self.model_name!r} is built for {entry.dataset}, not {d.dataset}"
            )
        if t.defense not in DEFENSES:
            raise ConfigError(
                f"unknown defense {t.defense!r}; known defenses: {', '.join(DEFENSES)}"
            )
        if a.name not in attacks.TRAINING_ATTACKS:
            raise ConfigError(
                f"unknown training attack {a.name!r}; known: {', '.join(attacks.TRAINING_ATTACKS)}"
            )
        if a.eps is not None:
            _at_least("eps", a.eps, 0.0)
            if a.eps > 1:
                raise ConfigError(f"eps must be <= 1 for images in [0, 1], received eps={a.eps}")
        _at_least("attack_steps", a.steps, 1)
        if a.step_size is not None:
            _at_least("attack_step_size", a.step_size, 0.0)
        for name in ("lambda1", "lambda2", "margin"):
            _at_least(name, getattr(t, name), 0.0)
        if t.norm not in losses.NORMS:
            raise ConfigError(f"unknown norm {t.norm!r}; known norms: {', '.join(losses.NORMS)}")
        _at_least("epochs", t.epochs, 1)
        _at_least("pretrain_epochs", t.pretrain_epochs, 0)
        _at_least("save_every_steps", t.save_every_steps, 0)
        if not t.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, received learning_rate={t.learning_rate}")
        if t.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {t.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}"
            )
        if t.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {t.strategy!r}; known strategies: {', '.join(STRATEGIES)}"
            )
        self._validate_preprocessing()
        self._validate_ensemble()
        for name in e.attacks:
            attacks.get_entry(name)
        _at_least("eval_examples", e.num_examples, 0)
        _at_least("eval_pgd_steps", e.pgd_steps, 1)
        _at_least("eval_pgd_step_size", e.pgd_step_size, 0.0)
        attacks.get_entry("autoattack").user_params[0].check(
            e.autoattack_version, "eval_autoattack_version"
        )
        return self

    def _validate_preprocessing(self):
        p, t, a = self.preprocessing, self.train, self.attack
        if p.name not in defenses.PREPROCESSING:
            raise ConfigError(
                f"unknown preprocessing {p.name!r}; known: {', '.join(defenses.PREPROCESSING)}"
            )
        if p.name == "thermometer":
            _at_least("thermometer_levels", p.thermometer_levels, 2)
        if p.name == "defense_gan":
            if not p.generator:
                raise ConfigError("--preprocessing=defense_gan needs --generator=PATH (a trained generator)")
            if not os.path.exists(p.generator):
                raise ConfigError(f"generator does not exist: {p.generator}")
            _at_least("dgan_steps", p.dgan_steps, 1)
            _at_least("dgan_restarts", p.dgan_restarts, 1)
            if t.defense not in ("none", "tr"):
                raise ConfigError(
                    f"defense_gan classifiers are trained on clean data (defense none) or with "
                    f"triplet regularization (defense tr), received defense={t.defense!r}"
                )
        if p.name == "random_resize_pad":
            size = self.spec.image_shape[0]
            low = size if p.resize_min is None else p.resize_min
            high = defenses.compose.default_output_size(size) if p.resize_output is None else p.resize_output
            if not size <= low < high:
                raise ConfigError(
                    f"random_resize_pad sizes must satisfy image size <= resize_min < resize_output, "
                    f"received image size {size}, resize_min={low}, resize_output={high}"
                )
        thermometer_attack = attacks.get_entry(a.name).inputs == "thermometer"
        if t.defense != "none" and thermometer_attack and p.name != "thermometer":
            raise ConfigError(
                f"attack {a.name!r} attacks a thermometer encoding: it needs "
                f"--preprocessing=thermometer, received preprocessing={p.name!r}"
            )
        if t.defense != "none" and p.name == "thermometer" and not thermometer_attack:
            raise ConfigError(
                f"the thermometer code has zero input gradient, so attack {a.name!r} cannot "
                "train against it: use --attack=ls_pga"
            )

    def _validate_ensemble(self):
        from at2l_tf.training import ensemble  # Local: training imports the attacks.

        n = self.ensemble
        if not n.attacks:
            if n.static_models:
                raise ConfigError("--static_models needs --ensemble_attacks (ensemble AT²L)")
            return
        ensemble.parse_attack_set(n.attacks)
        if self.train.defense not in ("at", "at2l", "tr"):
            raise ConfigError(
                f"ensemble training needs defense at, at2l or tr, received defense={self.train.defense!r}"
            )
        if self.preprocessing.name != "none":
            raise ConfigError(
                f"ensemble training works on plain classifiers, received preprocessing={self.preprocessing.name!r}"
            )
        if self.attack.name not in attacks.TRAINING_ATTACKS or attacks.get_entry(self.attack.name).inputs != "images":
            raise ConfigError(f"the validation attack must attack images, received attack={self.attack.name!r}")
        _at_least("regenerate_every", n.regenerate_every, 1)
        _at_least("ensemble_cw_steps", n.cw_steps, 1)
        if not n.cw_const > 0:
            raise ConfigError(f"ensemble_cw_const must be > 0, received ensemble_cw_const={n.cw_const}")
        for path in n.static_models:
            if not os.path.exists(path):
                raise ConfigError(f"static model does not exist: {path}")

    def to_dict(self):
        return dataclasses.asdict(self)


def _at_least(name, value, low):
    if value is None or value < low:
        raise ConfigError(f"{name} must be >= {low}, received {name}={value}")
