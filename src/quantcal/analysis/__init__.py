"""Analysis of the same items scored by two variants, and recalibration. Pure functions: numpy in, numbers out."""

from quantcal.analysis.comparison import Comparison, compare, flips, item_changes, paired_tests, stratify
from quantcal.analysis.recalibration import (CrossFit, apply_temperature, at_bound, cross_fit_temperature,
                                             fit_temperature, recalibrated_difference, recalibration_report)

__all__ = ["Comparison", "CrossFit", "apply_temperature", "at_bound", "compare", "cross_fit_temperature", "fit_temperature",
           "flips", "item_changes", "paired_tests", "recalibrated_difference", "recalibration_report", "stratify"]
