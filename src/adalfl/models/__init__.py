"""Model zoo. Every model takes ``input_shape`` and ``num_outputs`` from the dataset config and is
built with ``hydra.utils.instantiate`` from its ``conf/model/*.yaml``.

Tabular or images: linear (logistic regression), mlp. Images (C, H, W): lenet5, smallcnn,
alexnet, vgg16, allcnnc, resnet18, preresnet, wrn16_8, wrn28_10, squeezenet, pyramidnet
(32x32 variants). All use PyTorch's default layer initialisation (see ``common``).
"""

from adalfl.models.simple import MLP, Linear, reset_parameters

__all__ = ["MLP", "Linear", "reset_parameters"]
