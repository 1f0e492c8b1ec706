"""Robustness measurement: the report (worst case over attacks), adaptive attacks for
defence layers, gradient-masking checks, plots."""

from at2l_tf.evaluation import adaptive, masking, paired, plots
from at2l_tf.evaluation.report import AttackSpec, format_report, robustness_report

__all__ = ["AttackSpec", "adaptive", "format_report", "masking", "paired", "plots", "robustness_report"]
