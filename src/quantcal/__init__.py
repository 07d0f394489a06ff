"""quantcal: accuracy and calibration of compressed LLMs on zero-shot multiple-choice benchmarks."""

__version__ = "0.1.0"
