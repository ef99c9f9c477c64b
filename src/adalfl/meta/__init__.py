"""Differentiable base-optimiser steps and the meta-gradient engines built on them."""

from adalfl.meta.engine import MetaEngine, MetaStep, make_engine

__all__ = ["MetaEngine", "MetaStep", "make_engine"]
