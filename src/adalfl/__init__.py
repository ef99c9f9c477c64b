"""AdaLFL reproducibility suite: meta-learned adaptive loss functions and their baselines.

One job runs through ``adalfl.app.run`` (main.py). This module holds only the version: it is the
lowest layer (scripts/check_imports.py), which every module may import."""

__version__ = "0.1.0"
