"""Entry point: `python main.py [overrides]`, or `python main.py -m ...` for a sweep."""

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from adalfl.config import register_configs
from adalfl.sweep.resolvers import register_resolvers

# conf/hydra/launcher/submitit_local.yaml shares its name with the plugin's schema, which Hydra
# then applies (and warns about on every run); the file sets every key itself.
warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_local' is validated against ConfigStore")
register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from adalfl import run
    from adalfl.app import USER_ERRORS

    try:
        return run(cfg)
    except USER_ERRORS as err:
        # A single job with a user-fixable problem (bad value, missing data): one line, no trace.
        # In a sweep the error propagates, so the other jobs run and the sweep exits non-zero.
        if HydraConfig.get().mode != RunMode.RUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
