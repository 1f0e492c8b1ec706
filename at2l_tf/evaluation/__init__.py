"""Robustness measurement: the report (worst case over attacks), adaptive attacks for
defence layers, gradient-masking checks, plots, the work directory that lets an
evaluation resume, its progress lines, and the robustness record of a SavedModel.

One evaluation of an exported model, as the `evaluate` command runs it, is
`evaluation.run.evaluate(config)` with an `evaluation.config.EvaluationConfig`
(imported from their modules: they load models and data, which this package's
other modules do not need)."""

from at2l_tf.evaluation import adaptive, masking, paired, plots, progress, record, store
from at2l_tf.evaluation.report import AttackSpec, Partition, robustness_report
from at2l_tf.evaluation.summary import format_report

__all__ = [
    "AttackSpec", "Partition", "adaptive", "format_report", "masking", "paired", "plots", "progress",
    "record", "robustness_report", "store",
]
