r"""Train a classifier with AT²L (or AT, TRADES, MART, triplet regularisation, or clean training).

    python -m at2l_tf.train                                  # the paper's AT²L on the shipped MNIST
    python -m at2l_tf.train --flagfile=flags/mnist_reference.flags      # our most robust recipe (TRADES)
    python -m at2l_tf.train --flagfile=flags/mnist_at2l.flags
    python -m at2l_tf.train --objective=trades --beta=1 --attack_steps=10   # TRADES
    python -m at2l_tf.train --objective=mart --lambda2=0.5                  # MART + the paper's triplet
    python -m at2l_tf.train --objective=at --lambda2=0.5 --triplet_features=embedding \
        --triplet_distance=cosine --triplet_negative=hardest --margin=0.05  # AT + a TLA-style triplet
    python -m at2l_tf.train --dataset=cats_vs_dogs --data_dir=~/tensorflow_datasets
    python -m at2l_tf.train --image_dir=PetImages --image_size=64   # your own class subfolders

The default is the paper's method. Its triplet term showed no effect distinguishable
from zero in the full-budget study (`benchmarks/studies/triplet.py`; benchmarks/README.md);
TRADES was the most robust objective there.

**Objectives** (`--objective`; equations in `at2l_tf.training.objectives`):
`none` (clean CE), `at` (Eq. 1), `at2l` (Eq. 1 + the triplet term, Eq. 2),
`tr` (clean CE + the triplet term), `trades` (CE + β·KL, x' from TRADES' own
KL attack), `mart` (boosted CE + β·KL·(1 − p_y)). `--attack*` set the inner
attack's eps, steps and step size (TRADES uses them for its KL attack).
**The triplet term** goes on top of any of them: `--lambda2` > 0 adds it to
`at`, `trades`, `mart`; unset, λ2 is 0.5 for `at2l`/`tr` and 0 for the others,
so every older flagfile keeps its meaning. Its design space, defaults the
paper's: `--triplet_features=logits|embedding` (penultimate layer, same
forward pass), `--triplet_distance=linf|l2|l1|cosine`,
`--triplet_negative=random|hardest` (the closest clean example of
another class, TLA), `--margin` (α). `results.json` records the objective, its
loss and the triplet under `"training"`. `--defense` is a deprecated alias of
`--objective`, accepted with one warning line (the input layers in front of the
classifier are `--preprocessing`); `--norm`, once an alias of `--triplet_distance`,
is gone (a one-line error names its replacement).

**Training ingredients** (all off by default, composable with every objective):
`--ema=0.995` averages the weights (the run returns the average), `--eps_warmup_epochs=N`
ramps ε from 0 over N epochs (on by default for `mart` only), `--awp_gamma=G`
adds adversarial weight perturbation from epoch `--awp_warmup_epochs` + 1.

Every flag maps onto `at2l_tf.config.ExperimentConfig`, which is validated
before any data is loaded: a bad value exits with status 1 and one line naming
it. The run writes checkpoints, TensorBoard logs, `model.keras` and
`results.json` under `--workdir`, prints the test-split table (clean, FGSM, PGD-40,
AutoAttack `fast` and their worst case), and exports a SavedModel to `--export_dir/<version>/`.

A killed run resumes by itself when started again with the same flags (from the
backup of its last epoch, or of its last `--save_every_steps` step); Ctrl-C
stops it after writing a backup. `--strategy=multi_worker` trains on the workers
of `TF_CONFIG`; the same command runs on every worker. See the README,
"Resume and multiple workers", and `at2l_tf.training.backup` / `.distribute`.
"""

import os

from absl import flags

from at2l_tf import cli  # Sets TF log level before TensorFlow is imported.
from at2l_tf import config as config_lib
from at2l_tf.log import log

_D = config_lib.ExperimentConfig()

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", _D.data.dataset, "mnist | cifar10 | cats_vs_dogs | image_folder (set by --image_dir).")
flags.DEFINE_string("image_dir", None, "Train on a folder of class subfolders (PATH/cat/*.jpg, PATH/dog/*.jpg; at2l_tf.image_folder): split 80/10/10, files that do not decode skipped.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (CIFAR-10, Cats vs Dogs).")
flags.DEFINE_string("model", None, "Model registry name; default the dataset's default model.")
flags.DEFINE_string("objective", _D.train.objective, "Training objective (the recipe; equations in at2l_tf/training/objectives.py): none (clean CE) | at (Eq. 1) | at2l (Eq. 1 + the triplet term, Eq. 2) | tr (clean CE + triplet) | trades (CE + β·KL) | mart (boosted CE + β·KL·(1 − p_y)).")
flags.DEFINE_string("defense", None, "Deprecated alias of --objective.")
flags.DEFINE_string("attack", _D.attack.name, "Training attack: fgsm | fgsm_rs | ifgsm | pgd | ll | ill | ls_pga (thermometer models).")
flags.DEFINE_float("eps", None, "L-inf radius of the training attack; default per dataset (MNIST 0.3, else 8/255).")
flags.DEFINE_integer("attack_steps", _D.attack.steps, "Iterations of iterative training attacks.")
flags.DEFINE_float("attack_step_size", None, "Step size; default 2.5*eps/steps (iterative), 1.25*eps (fgsm_rs).")
flags.DEFINE_float("lambda1", _D.train.lambda1, "λ1: weight of the adversarial cross-entropy.")
flags.DEFINE_float("lambda2", _D.train.lambda2, "λ2: weight of the triplet term; > 0 adds it to at, trades, mart. Default 0.5 for at2l and tr, else 0.")
flags.DEFINE_float("margin", _D.train.margin, "α: triplet margin.")
flags.DEFINE_string("triplet_distance", _D.train.triplet_distance, "Distance of the triplet term: linf | l2 | l1 | cosine (1 - cos of L2-normalized features).")
flags.DEFINE_string("triplet_features", _D.train.triplet_features, "Features of the triplet term: logits (paper) | embedding (the penultimate layer's output, TLA).")
flags.DEFINE_string("triplet_negative", _D.train.triplet_negative, "Negative of the triplet term: random (paper: an in-batch example of the class x' is pushed to) | hardest (TLA: the closest clean example of another class).")
flags.DEFINE_float("beta", _D.train.beta, "β of trades and mart (weight of the KL term, >= 0); default 1.0 for trades (its MNIST value), 6.0 for mart.")
flags.DEFINE_string("preprocessing", _D.preprocessing.name, "Defence layer in front of the classifier: none | thermometer | random_resize_pad | defense_gan.")
flags.DEFINE_integer("thermometer_levels", _D.preprocessing.thermometer_levels, "Levels of the thermometer encoding (>= 2).")
flags.DEFINE_integer("resize_min", None, "random_resize_pad: smallest random size; default the image size.")
flags.DEFINE_integer("resize_output", None, "random_resize_pad: padded size; default image size + ceil(size/7) (MNIST 32).")
flags.DEFINE_string("generator", None, "defense_gan: the generator (.keras or a directory with generator.keras, e.g. savedmodels/mnist_generator).")
flags.DEFINE_integer("dgan_steps", _D.preprocessing.dgan_steps, "defense_gan: L, gradient steps per restart (paper 200).")
flags.DEFINE_integer("dgan_restarts", _D.preprocessing.dgan_restarts, "defense_gan: R, random restarts per image (paper 10).")
flags.DEFINE_integer("epochs", _D.train.epochs, "Training epochs.")
flags.DEFINE_integer("pretrain_epochs", _D.train.pretrain_epochs, "Clean epochs before the adversarial ones (line 1 of Algorithms 1, 2).")
flags.DEFINE_list("ensemble_attacks", list(_D.ensemble.attacks), "Ensemble AT²L (Algorithm 2): attack set gra | opt | mix, or a list (fgsm,ll,ifgsm,ill,pgd,fgsm_rs,cw); empty = Algorithm 1.")
flags.DEFINE_list("static_models", list(_D.ensemble.static_models), "Ensemble AT²L: static pre-trained models of M (.keras files or exports).")
flags.DEFINE_integer("regenerate_every", _D.ensemble.regenerate_every, "Ensemble AT²L: epochs between regenerations of the adversarial sets.")
flags.DEFINE_integer("ensemble_cw_steps", _D.ensemble.cw_steps, "Ensemble AT²L: Adam steps of C&W inside training.")
flags.DEFINE_float("ensemble_cw_const", _D.ensemble.cw_const, "Ensemble AT²L: the fixed C&W constant c inside training.")
flags.DEFINE_integer("batch_size", _D.data.batch_size, "Global batch size (>= 2).")
flags.DEFINE_float("learning_rate", _D.train.learning_rate, "Adam learning rate.")
flags.DEFINE_string("lr_schedule", _D.train.lr_schedule, "constant | cosine (decay to 0 over all steps).")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.")
flags.DEFINE_integer("validation_size", _D.data.validation_size, "Training examples held out for validation.")
flags.DEFINE_integer("image_size", _D.data.image_size, "Cats vs Dogs' and --image_dir's image side after resizing.")
flags.DEFINE_integer("seed", _D.train.seed, "Random seed.")
flags.DEFINE_string("strategy", _D.train.strategy, "auto | default | mirrored (tf.distribute.MirroredStrategy) | multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG).")
flags.DEFINE_string("mixed_precision", _D.train.mixed_precision, "Training precision: auto (bfloat16 on a CPU with native bf16, float16 on a GPU of compute capability >= 7.0, else float32) | off | bfloat16 | float16. Evaluation and export are float32 always.")
flags.DEFINE_float("ema", _D.train.ema, "Weight averaging: decay of an exponential moving average of the weights, updated every step (0: off; Gowal et al. 2020: 0.995). model.keras, the final check, the export and val_* metrics use the average.")
flags.DEFINE_integer("eps_warmup_epochs", _D.train.eps_warmup_epochs, "ε warm-up: the training attack's eps (and step size) ramps linearly from 0 to --eps over the first N adversarial epochs, per epoch (0: off). Default min(2, epochs - 1) for mart, 0 otherwise.")
flags.DEFINE_float("awp_gamma", _D.train.awp_gamma, "Adversarial weight perturbation (Wu et al. 2020): γ, each kernel moved by γ·||w|| along its loss gradient before the update (0: off; their CIFAR-10 values: 5e-3 trades, 1e-2 at).")
flags.DEFINE_integer("awp_warmup_epochs", _D.train.awp_warmup_epochs, "Adversarial epochs before AWP starts.")
flags.DEFINE_integer("save_every_steps", _D.train.save_every_steps, "Back up every N steps besides every epoch end (0: epoch ends only); a killed run resumes by itself.")
flags.DEFINE_list("eval_attacks", list(_D.eval.attacks), "Attacks of the final test-split check.")
flags.DEFINE_integer("eval_examples", _D.eval.num_examples, "Test images of the final check (0 skips it).")
flags.DEFINE_integer("eval_pgd_steps", _D.eval.pgd_steps, "PGD steps of the final check.")
flags.DEFINE_float("eval_pgd_step_size", _D.eval.pgd_step_size, "PGD step size of the final check.")
flags.DEFINE_string("eval_autoattack_version", _D.eval.autoattack_version, "AutoAttack of the final check: fast (APGD-CE + APGD-T) | standard (+ Square).")
flags.DEFINE_string("eval_attack_precision", _D.eval.attack_precision, "Where the final check's attacks search: float32 | bfloat16 (a bfloat16 copy, same weights) | auto (bfloat16 on a CPU with native bf16). Every verdict is float32.")
flags.DEFINE_string("workdir", None, "Output directory; default runs/<dataset>_<objective>.")
flags.DEFINE_string("export_dir", None, "SavedModel export root; default savedmodels/<dataset>_<objective>; '' skips.")
flags.DEFINE_enum("serving_input_check", "on", ["on", "off"], "on: the export's serving signature refuses images with NaN, Inf or values outside [0, 1] (INVALID_ARGUMENT in TF Serving); off: for clients that clip upstream.")
flags.DEFINE_integer("verbose", None, "0 silent, 1 progress bar, 2 one line per epoch; default 1 on a terminal, else 2.")


# Deprecated flag -> its replacement (the same setting; `deprecated_alias`).
DEPRECATED = {"defense": "objective"}
# Removed flag -> its replacement: giving it is a one-line error that names the replacement (`cli.run`).
REMOVED = {"norm": "triplet_distance"}
_warned = set()  # Deprecated names already warned about: once per process.


def deprecated_alias(f, old, new):
    """The value of flag `new`, or of its deprecated alias `old` when only that is given.

    Giving `--old` logs one deprecation line (once per process, however often the
    flags are mapped); giving both with different values is a `ConfigError`.
    """
    if not f[old].present:
        return f[new].value
    if f[new].present and f[new].value != f[old].value:
        raise config_lib.ConfigError(
            f"--{old} is a deprecated alias of --{new}: give only --{new} (a later one overrides a flagfile's), "
            f"received {f[new].serialize()} and {f[old].serialize()}"
        )
    if old not in _warned:
        _warned.add(old)
        log(f"warning: --{old} is deprecated; use --{new}")
    return f[old].value


def config_from_flags(f=FLAGS):
    """Maps parsed flags onto an `ExperimentConfig` (not yet validated)."""
    objective = deprecated_alias(f, "defense", "objective")
    dataset = f.dataset
    if f.image_dir and not f["dataset"].present:
        dataset = "image_folder"
    # Outputs of a folder are named after it: runs/PetImages_at2l.
    stem = os.path.basename(os.path.normpath(f.image_dir)) if f.image_dir else dataset
    name = f"{stem}_{objective}"
    if f.preprocessing != "none":
        name = f"{stem}_{f.preprocessing}_{objective}"
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(
            dataset=dataset,
            data_dir=f.data_dir,
            batch_size=f.batch_size,
            max_train_examples=f.max_train_examples,
            validation_size=f.validation_size,
            image_size=f.image_size,
            image_dir=f.image_dir,
        ),
        attack=config_lib.AttackConfig(
            name=f.attack, eps=f.eps, steps=f.attack_steps, step_size=f.attack_step_size
        ),
        train=config_lib.TrainConfig(
            objective=objective,
            lambda1=f.lambda1,
            lambda2=f.lambda2,
            margin=f.margin,
            triplet_distance=f.triplet_distance,
            beta=f.beta,
            triplet_features=f.triplet_features,
            triplet_negative=f.triplet_negative,
            epochs=f.epochs,
            learning_rate=f.learning_rate,
            lr_schedule=f.lr_schedule,
            seed=f.seed,
            pretrain_epochs=f.pretrain_epochs,
            strategy=f.strategy,
            save_every_steps=f.save_every_steps,
            mixed_precision=f.mixed_precision,
            ema=f.ema,
            eps_warmup_epochs=f.eps_warmup_epochs,
            awp_gamma=f.awp_gamma,
            awp_warmup_epochs=f.awp_warmup_epochs,
        ),
        eval=config_lib.EvalConfig(
            attacks=tuple(f.eval_attacks),
            num_examples=f.eval_examples,
            pgd_steps=f.eval_pgd_steps,
            pgd_step_size=f.eval_pgd_step_size,
            autoattack_version=f.eval_autoattack_version,
            attack_precision=f.eval_attack_precision,
        ),
        preprocessing=config_lib.PreprocessingConfig(
            name=f.preprocessing,
            thermometer_levels=f.thermometer_levels,
            resize_min=f.resize_min,
            resize_output=f.resize_output,
            generator=f.generator,
            dgan_steps=f.dgan_steps,
            dgan_restarts=f.dgan_restarts,
        ),
        ensemble=config_lib.EnsembleConfig(
            attacks=tuple(f.ensemble_attacks),
            static_models=tuple(f.static_models),
            regenerate_every=f.regenerate_every,
            cw_steps=f.ensemble_cw_steps,
            cw_const=f.ensemble_cw_const,
        ),
        model=f.model,
        workdir=f.workdir or f"runs/{name}",
        export_dir=f"savedmodels/{name}" if f.export_dir is None else (f.export_dir or None),
        serving_input_check=f.serving_input_check == "on",
    )


def main(argv):
    if len(argv) > 1:
        raise config_lib.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags().validate()
    from at2l_tf import experiment  # Heavy imports after validation.

    experiment.run(config, verbose=FLAGS.verbose)


if __name__ == "__main__":
    cli.run(main, "train", removed=REMOVED)
