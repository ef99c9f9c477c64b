"""OmegaConf resolvers used by conf/hydra settings (registered before Hydra composes).

Launchers that run jobs in other processes (joblib workers, submitit/Slurm jobs, requeued jobs)
do not execute main.py there; Hydra ships the registered resolvers to them inside its pickled
singleton state, which is why each resolver must be a module-level function (pickled by reference).
tests/test_resume.py and tests/test_slurm.py exercise this through real sweeps.
"""

from __future__ import annotations

import hashlib
import string

from omegaconf import OmegaConf

# Characters kept as they are in a job folder's name: harmless to every file system and to a shell
# (outside quotes) anywhere in a word. Everything else, `/` first of all, is percent-encoded.
SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "._-=,+")
# Longest job folder name. File systems allow 255 bytes (eCryptfs home folders 143); a shorter name
# also keeps paths readable. A longer name keeps its start and ends in a stable hash of the whole.
MAX_NAME = 128
HASH_CHARS = 16


def _encode(text: str) -> str:
    """Percent-encode (as in URLs, byte by byte in UTF-8) every character outside SAFE_CHARS, and a
    leading `.` or `-` (a hidden folder, or a name a command would take for an option).

    `%` itself is encoded, so distinct inputs give distinct names and the name decodes back with
    ``urllib.parse.unquote``.
    """
    out = []
    for i, char in enumerate(text):
        if char in SAFE_CHARS and not (i == 0 and char in ".-"):
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


def job_subdir(override_dirname: str, job_num: int) -> str:
    """A sweep job's folder name: its overrides (``dataset=digits,seed=1``), or its number when the
    job has no overrides of its own.

    Always a single path component, directly inside the sweep folder: a value such as
    ``dataset.root=/data/x`` would otherwise nest the job several folders deep, where ``*/result.json``
    and ``wandb sync <sweep>/*/wandb/...`` do not find it. The name depends on the overrides alone, so
    a rerun of the sweep finds each job's folder again and skips or resumes it. Names made only of
    SAFE_CHARS (the usual case) are unchanged, so sweeps started before this encoding still match.
    """
    if not override_dirname:
        return f"job{job_num}"
    name = _encode(override_dirname)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(override_dirname.encode("utf-8")).hexdigest()[:HASH_CHARS]
    keep = MAX_NAME - HASH_CHARS - len(",sha256=")
    head = name[:keep]
    cut = head.rfind("%", keep - 2)  # never end the kept part inside a %XX escape
    if cut != -1:
        head = head[:cut]
    return f"{head},sha256={digest}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("adalfl_job_subdir"):
        OmegaConf.register_new_resolver("adalfl_job_subdir", job_subdir)
