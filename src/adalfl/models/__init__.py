"""Model zoo. Every model takes ``input_shape`` and ``num_outputs`` from the dataset config and is
built with ``hydra.utils.instantiate`` from its ``conf/model/*.yaml``.

Tabular or images: linear (logistic regression), mlp. Images (C, H, W): lenet5, lenet5_relu,
smallcnn, alexnet, vgg16, allcnnc, resnet18, preresnet (the author's PreResNet-18), preresnet20,
wrn16_8, wrn28_10, squeezenet, pyramidnet (32x32 variants). The paper's networks are built as
the first author's EvoMAL code builds them, including his weight initialisation (``init_scheme``,
see ``init``), except for defects that change what a number means (each model's docstring says
which); ``reset_parameters`` re-draws a model from that same distribution.

A model refuses unusable arguments (a depth that is not 6n + 2, a tabular input_shape) with
``adalfl.config.ConfigError``, which the job reports in one line; any other exception from a
constructor is a bug and keeps its traceback.
"""

from adalfl.models.init import reset_parameters
from adalfl.models.simple import MLP, Linear

__all__ = ["MLP", "Linear", "reset_parameters"]
