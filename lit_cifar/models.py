"""`SeedCNN`: the notebook's network, built from a `RegularizationSpec`, with Keras's default initialization."""

from __future__ import annotations

from torch import Tensor, nn

from lit_cifar.spec import RegularizationSpec

# Keras BatchNormalization defaults: epsilon=1e-3 and momentum=0.99 for the moving averages, i.e. each update
# keeps 99% of the old value. PyTorch's momentum is the weight of the new batch: 1 - 0.99.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def keras_init_(module: nn.Module) -> None:
    """Keras defaults on every conv and linear layer: Glorot-uniform kernels, zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)  # fans as Keras: in/out channels x kernel area
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class SeedCNN(nn.Module):
    """The notebook's CNN: three 3x3 convolutions (32 channels, no padding), a 1024-unit dense layer, 10 logits.

    ``Conv-ReLU-[BN]`` x3 -> Flatten (26*26*32 = 21,632) -> Linear(21,632, 1024) -> ReLU -> [Dropout(p)] ->
    Linear(1024, 10). BatchNorm follows every convolution's ReLU when ``spec.batchnorm`` (the notebook's BN cell also
    dropped the first ReLU; we change one factor at a time). Dropout is present only when ``spec.dropout > 0``.
    Penalties and max-norm act on `hidden`, the 1024-unit layer, as the notebook's ``kernel_regularizer`` and
    ``kernel_constraint`` do. The ReLUs work in place (no layer needs its input after them): the same numbers, and
    ~40 MB fewer activations kept for the backward pass at batch 128.
    """

    def __init__(self, spec: RegularizationSpec | str = RegularizationSpec(), num_classes: int = 10,
                 in_channels: int = 3, width: int = 32, hidden_units: int = 1024, image_size: int = 32) -> None:
        super().__init__()
        spec = RegularizationSpec.coerce(spec)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(channels, width, kernel_size=3), nn.ReLU(inplace=True)]
            if spec.batchnorm:
                layers.append(nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM))
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size - 3 * 2
        self.hidden = nn.Linear(width * side * side, hidden_units)
        self.classifier = nn.Sequential(nn.ReLU(inplace=True), *([nn.Dropout(spec.dropout)] if spec.dropout else []),
                                        nn.Linear(hidden_units, num_classes))
        keras_init_(self)

    def regularized_layers(self) -> list[nn.Module]:
        """The layers whose kernels penalties and max-norm act on: the hidden dense layer."""
        return [self.hidden]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.hidden(self.features(x)))
