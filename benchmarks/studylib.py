"""What a study is: a configuration of the one study driver (`python benchmarks/study.py`).

A study is `benchmarks/studies/<name>.py` defining `STUDY` (a `Study`): its variants (each a
set of flags of `python -m at2l_tf.train` on top of a shared recipe), its seeds, how every
model is judged (`Evaluation`), which pairs of variants it compares, and the markdown of its
table in benchmarks/README.md; optionally a KerasTuner search per variant (`Tuning`) and a
pilot run that chooses the epochs (`Pilot`). `study_runs` runs it, `study_judge` judges its
models, `study_report` gives its statistics and tables. A minimal study:

    STUDY = Study(name="cosine", recipe=("--flagfile=flags/mnist_reference.flags", "--eval_examples=0"),
                  variants=(Variant("base", (), "TRADES"), Variant("cosine", ("--lr_schedule=cosine",), "+ cosine")),
                  seeds=(0, 1, 2), evaluation=Evaluation(autoattack="fast"), pairs=(("base", "cosine"),))
"""

import dataclasses
import os
import re
from typing import Callable, Optional

from study_report import attack_table, markdown

from at2l_tf.log import log

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
RUN_REF = re.compile(r"\{run:(\w+)\}")  # In a variant's flag: the workdir of that variant's run, same seed.


def note(msg):
    """One line on stderr, `[study] msg`."""
    log(msg, prefix="study")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a study.

    Attributes:
        name: key in the JSON (`<name>/s<seed>`) and in `--variants`.
        flags: train-command flags on top of the study's recipe; `{run:<variant>}` in a
            flag is the workdir of that variant's run with the same seed (run before it).
        label: its name in tables.
        tags: fields copied into each of its run records (what its table reads).
        tune: tune-command flags of its search (with `Study.tuning`); None: no search.
        design_from: a variant whose best trial's triplet design (features,
            distance, negative) it takes before its own search.
        needs: variants whose runs (same seed) it uses besides those its flags name.
    """

    name: str
    flags: tuple = ()
    label: str = ""
    tags: dict = dataclasses.field(default_factory=dict)
    tune: Optional[tuple] = None
    design_from: Optional[str] = None
    needs: tuple = ()


@dataclasses.dataclass(frozen=True)
class Attack:
    """One column of an attack-suite `Evaluation`: registry attack `name` with `params`, the
    report's `label`, the table's `header`. `adaptive` is `evaluation.adaptive.adapt`'s mode:
    `none` attacks the whole model as it is (the naive, possibly masked figure), `auto` the
    model's defence layer's adaptive attack (BPDA through a thermometer code, EOT over a
    random layer); attacks on the codes (LS-PGA) run behind the encoding either way.
    `seeded`: `params` get the run's seed; `layer_only`: skipped for a model without a layer."""

    label: str
    header: str
    name: str
    params: dict = dataclasses.field(default_factory=dict)
    adaptive: str = "none"
    seeded: bool = False
    layer_only: bool = False


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How each trained model is judged, by the first of these that is set:

    * `judge(driver, variant, seed, config, results)`: the study's own, returning the run
      record's fields (`config`: the run's `ExperimentConfig`; `results`: its results.json);
    * `attacks`: the `Attack` columns, run by `evaluation.robustness_report` on the run's
      `model.keras` (its defence layer in front, in float32) on the first `examples` MNIST
      test images in batches of `batch_size`, Keras' seed set to the run's seed first, EOT
      over `eot_draws` draws; robust = worst case per example over the L∞ columns;
    * `autoattack` (`fast` | `standard`): AutoAttack at `eps` on the first `examples` test
      images, in float32, per-example correctness kept (which paired comparisons need);
      `also`: `{version: n}` judges the first n seeds also by that version (the masking check);
    * none: the train command's own final check (the recipe's `--eval_*` flags).
    """

    autoattack: Optional[str] = None
    examples: int = 1000
    eps: float = 0.3
    also: dict = dataclasses.field(default_factory=dict)
    attacks: tuple = ()
    batch_size: int = 250
    eot_draws: int = 20
    judge: Optional[Callable] = None

    def describe(self):
        """What the JSON records of it."""
        out = {"autoattack": self.autoattack, "examples": self.examples, "eps": self.eps, "also": self.also}
        if self.attacks:
            out.update(attacks=[dataclasses.asdict(a) for a in self.attacks], batch_size=self.batch_size,
                       eot_draws=self.eot_draws)
        if self.judge:
            out["judge"] = f"{self.judge.__module__}.{self.judge.__name__}"
        return out


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One KerasTuner random search per variant with a `tune` (`python -m at2l_tf.tune`),
    the same number of trials for every variant; the best trial's `keys` go to its runs."""

    trials: int = 6
    train_examples: int = 10000
    epochs: int = 2
    keys: tuple = ("lambda1", "lambda2", "margin", "beta", "triplet_features", "triplet_distance", "triplet_negative")


@dataclasses.dataclass(frozen=True)
class Pilot:
    """A run of `variant` for `epochs`, each epoch's checkpoint judged by APGD-CE (20
    iterations) on the first 1,000 validation images; the study's epochs are the first
    within `tolerance` of the best (where validation robust accuracy stops rising)."""

    variant: str
    epochs: int = 12
    tolerance: float = 0.01


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: see the module docstring. `markdown(record)` prints its README table
    (from a committed JSON too; default `table`); `report(record, replicates)` replaces the
    generic `report`; `plot(record, png)` draws its figures after the report (beside `png`)."""

    name: str
    variants: tuple
    recipe: tuple = ()
    seeds: tuple = (0,)
    evaluation: Evaluation = Evaluation()
    pairs: tuple = ()
    tuning: Optional[Tuning] = None
    pilot: Optional[Pilot] = None
    markdown: Optional[Callable] = None
    report: Optional[Callable] = None
    plot: Optional[Callable] = None

    def table(self, record):
        """The study's table of `record`: its own `markdown`, else the attack suite's
        `attack_table` when its evaluation is one, else the generic `markdown`."""
        if self.markdown:
            return self.markdown(record)
        if self.evaluation.attacks:
            return attack_table(record, self.evaluation.attacks)
        return markdown(record)

    def variant(self, name):
        return next(v for v in self.variants if v.name == name)

    def needs(self, variant):
        """The variants whose runs `variant`'s run uses (`Variant.needs`, `{run:<name>}` in its flags)."""
        return (*variant.needs, *RUN_REF.findall(" ".join(variant.flags)))
