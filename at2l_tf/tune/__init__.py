"""Hyperparameter search of the training objectives with KerasTuner (`python -m at2l_tf.tune`).

The command's flags and its documentation are in `__main__.py` (`--help`);
the library below it never reads flags:

    space.py        what is searched (`SearchSpace`) and the attack of the objective
                    (`ObjectiveAttack`)
    hypermodel.py   the KerasTuner hypermodel: one training configuration per trial, and
                    the objective's callback (`RobustAccuracy`)
    settings.py     how the search runs (`SearchSettings`) and the files it writes
    resume.py       checks before anything is written: flags, and whether `--tune_dir`
                    holds this search (`search.json`)
    search.py       `run_search`: one machine, a distributed chief or a worker, each a `Search`
    distributed.py  KerasTuner's distributed mode: the roles, and the chief's serving
    report.py       progress lines, `summary.json`, `best.flags` and the table
"""

from at2l_tf.tune.distributed import TunerRole, tuner_role
from at2l_tf.tune.hypermodel import AT2LHyperModel, RobustAccuracy
from at2l_tf.tune.report import Reporter, format_table
from at2l_tf.tune.resume import check_tune_dir, search_record, validate
from at2l_tf.tune.search import run_search
from at2l_tf.tune.settings import SearchSettings, default_tune_dir
from at2l_tf.tune.space import OBJECTIVE_METRIC, ObjectiveAttack, SearchSpace, objective, used_by

__all__ = [
    "AT2LHyperModel",
    "OBJECTIVE_METRIC",
    "ObjectiveAttack",
    "Reporter",
    "RobustAccuracy",
    "SearchSettings",
    "SearchSpace",
    "TunerRole",
    "check_tune_dir",
    "default_tune_dir",
    "format_table",
    "objective",
    "run_search",
    "search_record",
    "tuner_role",
    "used_by",
    "validate",
]
