"""Entry point: `python main.py [overrides]`, or `python main.py -m ...` for a sweep."""

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from adalfl.configstore import register_configs
from adalfl.sweep.resolvers import register_resolvers


def ignore_known_warnings() -> None:
    """Silence warnings that are known, harmless and not the user's to act on, each by its exact text.

    Called at start-up and again inside every job: a submitit job runs the pickled task function
    without executing this module, and warning filters belong to the process.
    """
    # conf/hydra/launcher/submitit_local.yaml shares its name with the plugin's schema, which Hydra
    # then applies (and warns about on every run); the file sets every key itself.
    warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_local' is validated against ConfigStore")
    # PyTorch (2.14 here) scripts its forward-mode AD decompositions (torch/_decomp/decompositions_for_jvp.py)
    # the first time an AdaLFL job's meta step runs a jvp, and torch.jit.script warns that it is
    # deprecated: PyTorch's own call, nothing this project can change.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.script` is deprecated\. Please switch to `torch\.compile` or `torch\.export`\.$",
        category=FutureWarning,
    )


def refuse_moved_keys(argv: list[str]) -> None:
    """An override of a key that moved (``threads=1``, now ``runtime.threads=1``): one line naming
    the new key, before Hydra composes anything."""
    from adalfl.config import moved_key_hint

    hint = moved_key_hint([a for a in argv if not a.startswith("-")])
    if hint is not None:
        print(f"error: {hint}", file=sys.stderr)
        sys.exit(2)


ignore_known_warnings()
register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    ignore_known_warnings()
    from adalfl.app import USER_ERRORS, run
    from adalfl.sweep.errors import SweepJobFailed, report_job_error

    hydra_cfg = HydraConfig.get()
    try:
        return run(cfg)
    except Exception as err:
        user_error = isinstance(err, USER_ERRORS)
        if hydra_cfg.mode == RunMode.RUN:
            if not user_error:
                raise  # a bug: Hydra prints the traceback
            print(f"error: {err}", file=sys.stderr)  # a user-fixable problem: one line, no trace
            sys.exit(1)
        # In a sweep the job reports itself (Hydra would show only the first failure, as a
        # traceback), then fails with a one-line exception: the other jobs run, the sweep exits 1.
        report_job_error(err, int(hydra_cfg.job.num), list(hydra_cfg.overrides.task), user_error)
        raise SweepJobFailed(str(hydra_cfg.sweep.dir)) from None


if __name__ == "__main__":
    refuse_moved_keys(sys.argv[1:])
    main()
