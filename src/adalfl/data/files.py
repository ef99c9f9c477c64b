"""Where datasets live on disk, and the one error a missing dataset raises.

Every on-disk dataset is looked up under one data root (``dataset.root``, which defaults to the
``ADALFL_DATA_ROOT`` environment variable, else ``./data``) in the layout its library uses, so a
folder that torchvision or scikit-learn already filled is found as it is.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

ROOT_ENV = "ADALFL_DATA_ROOT"


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk (or is incomplete) and was not, or could not be, fetched.

    The message names the folder looked in and the command that fetches the data, so a user on a
    fresh machine learns what to do from the first line of the failure, within seconds.
    """


def data_root(cfg: DictConfig) -> Path:
    """The absolute data root of a dataset config (relative roots are taken from the working dir)."""
    if not cfg.get("root"):
        raise ValueError(f"dataset {cfg.name} reads files from disk: set dataset.root or ${ROOT_ENV}")
    return Path(str(cfg.root)).expanduser().resolve()


def fetch_command(cfg: DictConfig) -> str:
    """The command line that downloads this dataset into the configured root."""
    return f"python main.py dataset={cfg.name} dataset.root={data_root(cfg)} dataset.download=true"


def not_found(cfg: DictConfig, title: str, looked_in: Path, reason: str, how: str | None = None) -> DataNotFoundError:
    """Build the one message a missing dataset fails with: what, where, why, and how to fetch it."""
    how = how or f"fetch it with:  {fetch_command(cfg)}"
    return DataNotFoundError(
        f"{title} not found in {looked_in} ({reason}); {how}  "
        f"(or point dataset.root / ${ROOT_ENV} at a folder that holds it)"
    )
