"""Experiment configuration: one small dataclass per concern, composed.

Every default lives here (dataset-dependent ones, such as eps and the model,
come from `at2l_tf.data.get_spec`; per-objective ones, λ2 and β, from
`at2l_tf.training.objectives`). Entry points map flags onto these dataclasses;
`ExperimentConfig.validate()` checks everything before any data is loaded or
any model is built, and raises a `ConfigError` whose message names the bad
value. Each dataclass checks its own fields (`validate()`);
`ExperimentConfig.validate` adds the rules that span several of them.
"""

import dataclasses
import os
from typing import Optional

from at2l_tf import attacks, data, defenses, image_folder, losses, models, precision
from at2l_tf.errors import ConfigError, at_least
from at2l_tf.training import objectives

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class DataConfig:
    """Which data, and how it is batched.

    Attributes:
        dataset: `mnist` (shipped), `cifar10` or `cats_vs_dogs` (TFDS), or
            `image_folder` (the folder `image_dir`, `at2l_tf.image_folder`).
        data_dir: TFDS data directory.
        batch_size: global batch size (split across replicas).
        max_train_examples: cap on training examples (quick runs).
        validation_size: examples carved from train for validation.
        image_size: Cats vs Dogs' and an image folder's side length after resizing.
        image_dir: `image_folder`'s folder of class subfolders (flag `--image_dir`).
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    batch_size: int = 128
    max_train_examples: Optional[int] = None
    validation_size: int = data.DEFAULT_VALIDATION_SIZE
    image_size: int = data.DEFAULT_IMAGE_SIZE
    image_dir: Optional[str] = None

    def validate(self):
        if self.dataset not in data.available_datasets():
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; known datasets: "
                f"{', '.join(data.available_datasets())}"
            )
        at_least("batch_size", self.batch_size, 2)  # A triplet needs two examples.
        at_least("image_size", self.image_size, 8)
        at_least("validation_size", self.validation_size, 0)
        if self.max_train_examples is not None:
            at_least("max_train_examples", self.max_train_examples, self.batch_size)
        if (self.dataset == image_folder.NAME) != bool(self.image_dir):
            raise ConfigError(
                f"image_dir goes with dataset={image_folder.NAME!r} (set by --image_dir alone), "
                f"received dataset={self.dataset!r}, image_dir={self.image_dir!r}"
            )
        if self.image_dir:
            image_folder.check_directory(self.image_dir)  # Lists subfolders only.
        return self


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

    def validate(self):
        if self.name not in attacks.TRAINING_ATTACKS:
            raise ConfigError(
                f"unknown training attack {self.name!r}; known: {', '.join(attacks.TRAINING_ATTACKS)}"
            )
        if self.eps is not None:
            at_least("eps", self.eps, 0.0)
            if self.eps > 1:
                raise ConfigError(f"eps must be <= 1 for images in [0, 1], received eps={self.eps}")
        at_least("attack_steps", self.steps, 1)
        if self.step_size is not None:
            at_least("attack_step_size", self.step_size, 0.0)
        return self


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

    def validate(self):
        """Checks the layer's own fields (sizes against the image: `ExperimentConfig`)."""
        if self.name not in defenses.PREPROCESSING:
            raise ConfigError(
                f"unknown preprocessing {self.name!r}; known: {', '.join(defenses.PREPROCESSING)}"
            )
        if self.name == "thermometer":
            at_least("thermometer_levels", self.thermometer_levels, 2)
        if self.name == "defense_gan":
            if not self.generator:
                raise ConfigError("--preprocessing=defense_gan needs --generator=PATH (a trained generator)")
            if not os.path.exists(self.generator):
                raise ConfigError(f"generator does not exist: {self.generator}")
            at_least("dgan_steps", self.dgan_steps, 1)
            at_least("dgan_restarts", self.dgan_restarts, 1)
        return self


@dataclasses.dataclass
class TrainConfig:
    """Loss and optimisation.

    Attributes:
        objective: the recipe (flag `--objective`; `training.objectives`): `none`, `at` (Eq. 1),
            `at2l` (Eq. 2: AT + the triplet term), `tr` (clean CE + the triplet
            term), `trades` (TRADES) or `mart` (MART). Records written before
            the rename call it `defense` (`identity.renamed` reads them).
        lambda1: weight of the adversarial cross-entropy (Eq. 1, 2).
        lambda2: weight λ2 of the triplet term (Eq. 2). `None` (default): 0.5,
            the paper's, for `at2l` and `tr`; 0 (no triplet term) for `at`,
            `trades`, `mart`. A value > 0 adds the term to `at`, `trades` or
            `mart`; `none` ignores it (it crafts no adversarial examples).
        margin: triplet margin α.
        triplet_distance: the triplet distance d (flag `--triplet_distance`):
            `linf` (the paper's), `l2`, `l1`, or `cosine` (1 − cos between
            L2-normalized features, TLA). Records written before the rename
            call it `norm` (`identity.renamed` reads them).
        beta: β of `trades` / `mart`, the weight of the KL term (>= 0).
            `None` (default): 1.0 for TRADES (its published MNIST value, MNIST
            being the default dataset; CIFAR-10: 6), 6.0 for MART (its published
            value, for CIFAR-10). Only `trades` and `mart` take it.
        triplet_features: what the triplet compares: `logits` (the paper's) or
            `embedding` (the penultimate layer's output, TLA; same forward pass).
        triplet_negative: `random` (the paper's: a random in-batch example of
            the class x' is pushed to) or `hardest` (TLA: the closest clean
            example of another class under the distance).
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
        mixed_precision: the training precision, `auto` | `off` | `bfloat16` |
            `float16` (`at2l_tf.precision`: resolved once per run; evaluation,
            `model.keras` and the export are float32 whatever it is). `auto` by
            default: trained in bfloat16, the main recipe lost no robustness
            beyond the seeds' spread (benchmarks/studies/precision.py; README).
        ema: decay d of an exponential moving average of the weights, updated
            every step (`training.weight_average`; 0: off; Gowal et al. 2020:
            0.995). The average is what the run returns (`model.keras`, the
            final check, the export) and what validation measures.
        eps_warmup_epochs: N: the training attack's ε ramps linearly from 0 to
            `eps` over the first N adversarial epochs, per epoch
            (`experiment.training_eps`: epoch e trains at eps·(e + ½)/N), its
            step size in proportion; 0: the full ε from the first step. `None`
            (default): the objective's default (`objectives.resolve_eps_warmup`):
            min(2, epochs − 1) for MART, 0 for the others.
        awp_gamma: γ of adversarial weight perturbation (`training.awp`; Wu et
            al. 2020; 0: off; their CIFAR-10 values 5e-3 with TRADES, 1e-2 with AT).
        awp_warmup_epochs: adversarial epochs trained without AWP before it
            starts (the authors start it after a few epochs).
    """

    objective: str = "at2l"
    lambda1: float = 1.0
    lambda2: Optional[float] = None
    margin: float = 0.5
    triplet_distance: str = "linf"
    beta: Optional[float] = None
    triplet_features: str = "logits"
    triplet_negative: str = "random"
    epochs: int = 3
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    seed: int = 0
    pretrain_epochs: int = 0
    strategy: str = "auto"
    save_every_steps: int = 0
    mixed_precision: str = "auto"
    ema: float = 0.0
    eps_warmup_epochs: Optional[int] = None
    awp_gamma: float = 0.0
    awp_warmup_epochs: int = 1

    @property
    def eps_warmup(self):
        """N, the ε warm-up in epochs: `eps_warmup_epochs` or the objective's default."""
        return objectives.resolve_eps_warmup(self.objective, self.eps_warmup_epochs, self.epochs)

    @property
    def uses_triplet(self):
        """Whether the run trains with the triplet term (`objectives.uses_triplet`)."""
        return objectives.uses_triplet(self.objective, self.lambda2)

    def describe(self):
        """`{"objective", "loss", "triplet"}`: what the run trains with (for `results.json`)."""
        return objectives.describe(
            self.objective, lambda1=self.lambda1, lambda2=self.lambda2, beta=self.beta,
            margin=self.margin, distance=self.triplet_distance, features=self.triplet_features,
            negative=self.triplet_negative,
        )

    def validate(self):
        if self.objective not in objectives.CHOICES:
            raise ConfigError(
                f"unknown objective {self.objective!r}; known objectives: {', '.join(objectives.CHOICES)}"
            )
        at_least("lambda1", self.lambda1, 0.0)
        if self.lambda2 is not None:
            at_least("lambda2", self.lambda2, 0.0)
        at_least("margin", self.margin, 0.0)
        if self.triplet_distance not in losses.DISTANCES:
            raise ConfigError(
                f"unknown triplet_distance {self.triplet_distance!r}; known: {', '.join(losses.DISTANCES)}"
            )
        if self.beta is not None:
            at_least("beta", self.beta, 0.0)
            if not objectives.uses_beta(self.objective):
                raise ConfigError(
                    f"beta is the weight of the KL term of trades and mart: objective={self.objective!r} "
                    f"takes no beta, received beta={self.beta}"
                )
        for name, known in (("triplet_features", objectives.TRIPLET_FEATURES),
                            ("triplet_negative", objectives.TRIPLET_NEGATIVES)):
            value = getattr(self, name)
            if value not in known:
                raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(known)}")
            if value != known[0] and not self.uses_triplet:
                raise ConfigError(
                    f"{name}={value!r} needs the triplet term, which objective={self.objective!r} "
                    + ("does not have (no adversarial examples; clean CE + triplet is --objective=tr)"
                       if self.objective == "none" else "adds only with --lambda2 > 0")
                )
        at_least("epochs", self.epochs, 1)
        at_least("pretrain_epochs", self.pretrain_epochs, 0)
        at_least("save_every_steps", self.save_every_steps, 0)
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, received learning_rate={self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}"
            )
        if self.mixed_precision not in precision.CHOICES:
            raise ConfigError(
                f"unknown mixed_precision {self.mixed_precision!r}; known: {', '.join(precision.CHOICES)}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; known strategies: {', '.join(STRATEGIES)}"
            )
        self._validate_ingredients()
        return self

    def _validate_ingredients(self):
        """Weight averaging, the ε warm-up and AWP."""
        if self.ema is None or not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1) (0: off), received ema={self.ema}")
        if self.eps_warmup_epochs is not None:
            at_least("eps_warmup_epochs", self.eps_warmup_epochs, 0)
            if self.eps_warmup_epochs > 0 and self.objective == "none":
                raise ConfigError(
                    f"eps_warmup_epochs ramps the training attack's eps: objective='none' crafts no "
                    f"adversarial examples, received eps_warmup_epochs={self.eps_warmup_epochs}"
                )
            if self.eps_warmup_epochs >= self.epochs > 0 and self.eps_warmup_epochs > 0:
                raise ConfigError(
                    f"eps_warmup_epochs must be < epochs so that training ends at the full eps, "
                    f"received eps_warmup_epochs={self.eps_warmup_epochs} with epochs={self.epochs}"
                )
        if self.awp_gamma is None or not self.awp_gamma >= 0:
            raise ConfigError(f"awp_gamma must be >= 0 (0: off), received awp_gamma={self.awp_gamma}")
        at_least("awp_warmup_epochs", self.awp_warmup_epochs, 0)
        if self.awp_gamma > 0 and self.awp_warmup_epochs >= self.epochs:
            raise ConfigError(
                f"awp_warmup_epochs must be < epochs or AWP never starts, received "
                f"awp_warmup_epochs={self.awp_warmup_epochs} with epochs={self.epochs}"
            )


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

    def validate(self):
        """Checks the ensemble's own fields (its rules against the rest: `ExperimentConfig`)."""
        from at2l_tf.training import ensemble  # Local: training imports the attacks.

        if not self.attacks:
            if self.static_models:
                raise ConfigError("--static_models needs --ensemble_attacks (ensemble AT²L)")
            return self
        ensemble.parse_attack_set(self.attacks)
        at_least("regenerate_every", self.regenerate_every, 1)
        at_least("ensemble_cw_steps", self.cw_steps, 1)
        if not self.cw_const > 0:
            raise ConfigError(f"ensemble_cw_const must be > 0, received ensemble_cw_const={self.cw_const}")
        for path in self.static_models:
            if not os.path.exists(path):
                raise ConfigError(f"static model does not exist: {path}")
        return self


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
        attack_precision: where the attacks' forward and backward passes run:
            `float32`, `bfloat16` (a bfloat16 copy of the classifier) or `auto`
            (`precision.resolve_attack_precision`); every verdict is float32.
    """

    attacks: tuple = ("fgsm", "pgd", "autoattack")
    num_examples: int = 1000
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    autoattack_version: str = "fast"
    attack_precision: str = "float32"

    def validate(self):
        for name in self.attacks:
            attacks.get_entry(name)
        at_least("eval_examples", self.num_examples, 0)
        at_least("eval_pgd_steps", self.pgd_steps, 1)
        at_least("eval_pgd_step_size", self.pgd_step_size, 0.0)
        attacks.get_entry("autoattack").user_params[0].check(
            self.autoattack_version, "eval_autoattack_version"
        )
        if self.attack_precision not in precision.ATTACK_CHOICES:
            raise ConfigError(
                f"eval_attack_precision must be one of {', '.join(precision.ATTACK_CHOICES)}, "
                f"received eval_attack_precision={self.attack_precision!r}"
            )
        return self


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
        return data.get_spec(self.data.dataset, self.data.image_size, self.data.image_dir)

    @property
    def model_name(self):
        return self.model or self.spec.default_model

    @property
    def eps(self):
        return self.spec.default_eps if self.attack.eps is None else self.attack.eps

    @property
    def training_attack(self):
        """The attack that crafts x' in the step: `attack.name`, or the objective's own
        (TRADES' `trades_kl`); None when no adversarial example is crafted."""
        t = self.train
        objective = objectives.for_objective(t.objective, lambda1=t.lambda1, beta=t.beta)
        if not (objective.needs_adversarial or t.uses_triplet):
            return None
        try:
            return objective.inner_attack(self.attack.name)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def validate(self):
        """Checks every value; raises `ConfigError` naming the first bad one.

        Each section checks its own fields; the rules here span several.
        """
        d, t = self.data, self.train
        d.validate()
        entry = models.get_entry(self.model_name)
        # A folder of RGB images takes any model built for RGB images of any size.
        rgb = d.dataset == image_folder.NAME and entry.dataset in ("cats_vs_dogs", "cifar10")
        if entry.dataset != d.dataset and not rgb:
            raise ConfigError(
                f"model {self.model_name!r} is built for {entry.dataset}, not {d.dataset}"
            )
        t.validate()
        self.attack.validate()
        self._validate_objective()
        self.preprocessing.validate()
        self._validate_preprocessing()
        self._validate_ensemble()
        self.eval.validate()
        return self

    def _validate_objective(self):
        """The objective against the attack and the model."""
        # Resolving the training attack raises if --attack names another than TRADES' own.
        _ = self.training_attack
        t = self.train
        if t.uses_triplet and t.triplet_features == "embedding":
            from at2l_tf.training import embedding  # Local: builds a Keras model.

            spec = self.spec
            net = models.get_model(self.model_name, input_shape=spec.image_shape, num_classes=spec.num_classes)
            try:
                embedding.check_has_embedding(net)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def _validate_preprocessing(self):
        p, t = self.preprocessing, self.train
        if p.name == "defense_gan" and t.objective not in ("none", "tr"):
            raise ConfigError(
                f"defense_gan classifiers are trained on clean data (objective none) or with "
                f"triplet regularization (objective tr), received objective={t.objective!r}"
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
        attack = self.training_attack
        if attack is None:
            return
        thermometer_attack = attacks.get_entry(attack).inputs == "thermometer"
        if thermometer_attack and p.name != "thermometer":
            raise ConfigError(
                f"attack {attack!r} attacks a thermometer encoding: it needs "
                f"--preprocessing=thermometer, received preprocessing={p.name!r}"
            )
        if p.name == "thermometer" and not thermometer_attack:
            raise ConfigError(
                f"the thermometer code has zero input gradient, so attack {attack!r} cannot "
                "train against it: use --attack=ls_pga"
            )

    def _validate_ensemble(self):
        n = self.ensemble
        n.validate()
        if not n.attacks:
            return
        if self.train.objective not in ("at", "at2l", "tr"):
            raise ConfigError(
                f"ensemble training needs objective at, at2l or tr, received objective={self.train.objective!r}"
            )
        if self.preprocessing.name != "none":
            raise ConfigError(
                f"ensemble training works on plain classifiers, received preprocessing={self.preprocessing.name!r}"
            )
        if self.train.eps_warmup:
            raise ConfigError(
                "ensemble training crafts its adversarial sets at the full eps: it takes no "
                f"eps warm-up, received eps_warmup_epochs={self.train.eps_warmup}"
            )
        if self.attack.name not in attacks.TRAINING_ATTACKS or attacks.get_entry(self.attack.name).inputs != "images":
            raise ConfigError(f"the validation attack must attack images, received attack={self.attack.name!r}")

    def to_dict(self):
        return dataclasses.asdict(self)
