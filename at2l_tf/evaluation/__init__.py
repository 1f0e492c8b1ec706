"""Robustness measurement: the report (worst case over attacks), gradient-masking checks, plots."""

from at2l_tf.evaluation import masking, plots
from at2l_tf.evaluation.report import AttackSpec, format_report, robustness_report

__all__ = ["AttackSpec", "format_report", "masking", "plots", "robustness_report"]
