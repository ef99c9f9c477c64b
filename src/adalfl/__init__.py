"""AdaLFL reproducibility suite: meta-learned adaptive loss functions and their baselines."""

__version__ = "0.1.0"


def run(cfg):  # noqa: ANN001, ANN201 - thin re-export so main.py stays a one-liner
    """Run one job described by a composed Hydra config; see adalfl.app.run."""
    from adalfl.app import run as _run

    return _run(cfg)
