"""Registers the config schemas with Hydra's ConfigStore: the fixed groups' from adalfl.config, and
each method's ``CONFIG_SCHEMA``, discovered from the modules of adalfl.methods. It imports the
methods, so it sits above them, beside adalfl.app; main.py calls it at start-up."""

from __future__ import annotations

import importlib
import pkgutil

from hydra.core.config_store import ConfigStore

import adalfl.methods as methods_pkg
from adalfl.config import Config, DatasetConfig, LoggerConfig, MethodConfig, OptimizerConfig


def register_configs() -> None:
    """Register every schema; safe to call more than once.

    The schemas sit at the config root, outside the groups (``/dataset_schema``, ``/adalfl_schema``...):
    a group config extends its schema with ``- /<name>_schema`` in its defaults list, and they are
    never options of a group (``method=adalfl_schema`` is no method; ``--help`` lists real options only)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="dataset_schema", node=DatasetConfig)
    cs.store(name="optimizer_schema", node=OptimizerConfig)
    cs.store(name="logger_schema", node=LoggerConfig)
    cs.store(name="method_schema", node=MethodConfig)
    for info in pkgutil.iter_modules(methods_pkg.__path__):
        module = importlib.import_module(f"adalfl.methods.{info.name}")
        schema = getattr(module, "CONFIG_SCHEMA", None)
        if schema is not None:
            cs.store(name=f"{info.name}_schema", node=schema)
