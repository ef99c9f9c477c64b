"""Differentiable base-optimiser steps and the meta-gradient engines built on them."""

from adalfl.meta.engine import Backend, MetaEngine, MetaStep, make_engine

__all__ = ["Backend", "MetaEngine", "MetaStep", "make_engine"]
