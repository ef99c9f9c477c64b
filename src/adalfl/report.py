"""`python -m adalfl.report <sweep folder> [...]`: rebuild a sweep's tables and figures and print
the Markdown table. Works on finished and partial sweeps alike. When the sweep ran with W&B
(`logger` in its multirun.yaml), the rebuilt tables and figures also go to the sweep's W&B run."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from adalfl.sweep import report


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0 if argv else 2
    status = 0
    for arg in argv:
        sweep = Path(arg)
        if not sweep.is_dir():
            print(f"not a folder: {sweep}", file=sys.stderr)
            status = 2
            continue
        built = report.write(sweep, logger=_sweep_logger(sweep))
        if not built.cells:
            print(f"no job results under {sweep}", file=sys.stderr)
            status = 1
        print(report.markdown(built))
        print(f"written: {sweep / 'results.md'}, results.csv, results.tex, figures/", file=sys.stderr)
    return status


def _sweep_logger(sweep: Path) -> DictConfig | None:
    """The logger node the sweep ran with (its multirun.yaml), or None for a folder without one."""
    path = sweep / "multirun.yaml"
    return OmegaConf.load(path).get("logger") if path.exists() else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
