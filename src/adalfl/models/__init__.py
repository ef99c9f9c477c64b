"""Model zoo. Every model takes ``input_shape`` and ``num_outputs`` from the dataset config and is
built with ``hydra.utils.instantiate`` from its ``conf/model/*.yaml``.

Tabular or images: linear (logistic regression), mlp. Images (C, H, W): lenet5, smallcnn,
alexnet, vgg16, allcnnc, resnet18, preresnet, wrn16_8, wrn28_10, squeezenet, pyramidnet
(32x32 variants). Each draws its weights as the first author's code does (``init_scheme``,
see ``init``); ``reset_parameters`` re-draws a model from that same distribution.
"""

from adalfl.models.init import reset_parameters
from adalfl.models.simple import MLP, Linear

__all__ = ["MLP", "Linear", "reset_parameters"]
