"""Where datasets live on disk, the one way their files are fetched, and the one error a missing
dataset raises.

Every on-disk dataset is looked up under one data root (``dataset.root``, which defaults to the
``ADALFL_DATA_ROOT`` environment variable, else ``./data``), in its own ``dataset.folder``, laid out
as its library lays it out, so a folder that torchvision or scikit-learn already filled is found as
it is. ``fetch`` is the one download path: every loader opens its files through it, and with
``dataset.download=true`` the library (torchvision, scikit-learn, or a plain URL download) fetches
what is missing first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from omegaconf import DictConfig

from adalfl.config import ConfigError

ROOT_ENV = "ADALFL_DATA_ROOT"
T = TypeVar("T")

# torchvision: "Dataset not found or corrupted"; scikit-learn: "Data not found and
# `download_if_missing` is False"; urllib: offline. DataNotFoundError is an OSError too.
MISSING_ERRORS = (RuntimeError, OSError)


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk (or is incomplete) and was not, or could not be, fetched.

    The message names the folder looked in and the command that fetches the data, so a user on a
    fresh machine learns what to do from the first line of the failure, within seconds.
    """


def data_root(cfg: DictConfig) -> Path:
    """The absolute data root of a dataset config (relative roots are taken from the working dir)."""
    if not cfg.get("root"):
        raise ConfigError(f"dataset {cfg.name} reads files from disk: set dataset.root or ${ROOT_ENV}")
    return Path(str(cfg.root)).expanduser().resolve()


def dataset_folder(cfg: DictConfig) -> Path:
    """This dataset's folder: ``dataset.folder`` under the data root (the root itself when empty)."""
    return data_root(cfg) / str(cfg.get("folder") or "")


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


def fetch(
    cfg: DictConfig,
    title: str,
    looked_in: Path,
    read: Callable[[bool], T],
    library: str,
    missing: str | None = None,
    unparsable: tuple[type[BaseException], ...] = (),
    how: str | None = None,
) -> T:
    """Open a dataset's files with ``read(download)``, which has ``library`` download them first
    when asked to (``dataset.download=true``); a failure to find or fetch them is one DataNotFoundError.

    ``missing``: the reason given when the files are absent and download is off. ``unparsable``: the
    errors the library raises on a file that exists but does not parse (torchvision's idx reader
    asserts, often with an empty message): a damaged file reads as the same clear data error.
    """
    try:
        return read(bool(cfg.download))
    except ConfigError:  # a bad value in the YAML, not a missing or damaged file
        raise
    except MISSING_ERRORS as err:
        reason = (
            f"download failed: {err}" if cfg.download else (missing or f"{library} found no complete, uncorrupted copy")
        )
        raise not_found(cfg, title, looked_in, reason, how) from err
    except unparsable as err:
        detail = f"{type(err).__name__}{': ' + str(err) if str(err) else ''}"
        reason = (
            f"{library} could not parse its files ({detail}): damaged or of another format; delete them and fetch again"
        )
        raise not_found(cfg, title, looked_in, reason, how) from err
