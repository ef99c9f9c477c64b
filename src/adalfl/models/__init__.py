"""Model zoo. Every model takes ``input_shape`` and ``num_outputs`` from the dataset config and is
built with ``hydra.utils.instantiate`` from its ``conf/model/*.yaml``."""

from adalfl.models.simple import MLP, Linear, reset_parameters

__all__ = ["MLP", "Linear", "reset_parameters"]
