"""`NotebookCNN`: the notebook's architecture, its spec-driven layers and Keras's default initialization."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_cifar.models import NotebookCNN
from lit_cifar.spec import RegularizationSpec


@pytest.fixture(scope="module")
def baseline() -> NotebookCNN:
    torch.manual_seed(0)
    return NotebookCNN()


def layers_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_layer_shapes(baseline: NotebookCNN) -> None:
    convs = layers_of(baseline, nn.Conv2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (0, 0)),
        (32, 32, (3, 3), (0, 0)),
        (32, 32, (3, 3), (0, 0)),
    ]
    assert (baseline.hidden.in_features, baseline.hidden.out_features) == (26 * 26 * 32, 1024) == (21632, 1024)
    linears = layers_of(baseline, nn.Linear)
    assert linears[0] is baseline.hidden
    assert (linears[-1].in_features, linears[-1].out_features) == (1024, 10)


def test_parameter_count_of_baseline(baseline: NotebookCNN) -> None:
    conv1 = 3 * 32 * 9 + 32
    conv23 = 32 * 32 * 9 + 32
    hidden = 21632 * 1024 + 1024
    output = 1024 * 10 + 10
    assert sum(p.numel() for p in baseline.parameters()) == conv1 + 2 * conv23 + hidden + output == 22_181_834


@pytest.mark.parametrize("batch", [1, 5])
def test_forward_gives_logits_per_image(baseline: NotebookCNN, batch: int) -> None:
    with torch.no_grad():
        out = baseline(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_biases_start_at_zero(baseline: NotebookCNN) -> None:
    layers = layers_of(baseline, (nn.Conv2d, nn.Linear))
    assert len(layers) == 5
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0


def glorot_bound(layer: nn.Module) -> float:
    """Keras's glorot_uniform limit: fans are channels times kernel area for convolutions."""
    receptive = layer.weight[0, 0].numel()
    fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
    return math.sqrt(6 / (fan_in + fan_out))


def test_weights_are_glorot_uniform(baseline: NotebookCNN) -> None:
    for layer in layers_of(baseline, (nn.Conv2d, nn.Linear)):
        bound = glorot_bound(layer)
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.9 * bound  # fills the range, not a narrower distribution
    hidden = baseline.hidden.weight.detach().double()  # 22M samples: the variance is known to ~0.1%
    bound = glorot_bound(baseline.hidden)
    assert bound == pytest.approx(math.sqrt(6 / (21632 + 1024)))
    assert hidden.mean().item() == pytest.approx(0, abs=bound * 1e-3)
    assert hidden.var().item() == pytest.approx(bound**2 / 3, rel=1e-2)


def test_batchnorm_after_each_relu_with_keras_defaults() -> None:
    model = NotebookCNN("bn")
    norms = layers_of(model, nn.BatchNorm2d)
    assert len(norms) == 3
    assert all(n.eps == 1e-3 and n.momentum == 0.01 and n.num_features == 32 for n in norms)
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d] * 3 + [nn.Flatten]


def test_no_batchnorm_without_bn(baseline: NotebookCNN) -> None:
    assert not layers_of(baseline, nn.modules.batchnorm._BatchNorm)
    assert [type(m) for m in baseline.features] == [nn.Conv2d, nn.ReLU] * 3 + [nn.Flatten]


@pytest.mark.parametrize("dropout", [0.0, 0.25, 0.5])
def test_dropout_layer_iff_dropout_positive(dropout: float) -> None:
    model = NotebookCNN(RegularizationSpec(dropout=dropout), hidden_units=8)
    drops = layers_of(model, nn.Dropout)
    if dropout:
        assert [d.p for d in drops] == [dropout]
        assert [type(m) for m in model.classifier] == [nn.ReLU, nn.Dropout, nn.Linear]
    else:
        assert drops == []


def test_regularized_layers_is_the_hidden_layer(baseline: NotebookCNN) -> None:
    layers = baseline.regularized_layers()
    assert len(layers) == 1 and layers[0] is baseline.hidden


def test_spec_text_is_accepted() -> None:
    model = NotebookCNN("pixel+bn+dropout=0.5", hidden_units=8)
    assert len(layers_of(model, nn.BatchNorm2d)) == 3 and len(layers_of(model, nn.Dropout)) == 1


def test_an_unknown_name_is_an_attribute_error() -> None:
    import lit_cifar

    with pytest.raises(AttributeError, match="NoSuchNet"):
        lit_cifar.NoSuchNet  # noqa: B018


def test_every_name_of_the_notebook_cnn_is_the_default_model_with_one_hash(tmp_path) -> None:
    import yaml

    from ablations.suite import expand_trials, load_suite

    def first_hash(**content: object) -> str:
        path = tmp_path / "mine.yaml"
        path.write_text(yaml.safe_dump({"name": "mine", "specs": ["pixel"], "settings": {"seeds": [0]}, **content}))
        suite = load_suite(str(path))
        return expand_trials(suite, suite.settings)[0].settings_hash

    default = first_hash()
    assert {
        first_hash(model={"class_path": path}) for path in ("lit_cifar.NotebookCNN", "lit_cifar.models.NotebookCNN")
    } == {default}


def test_a_backbones_init_args_are_recovered_only_where_they_rebuild_it() -> None:
    from lit_cifar.models import recover_init_args

    spec = RegularizationSpec.parse("pixel+bn")
    recovered = recover_init_args(NotebookCNN(spec, width=8, hidden_units=16, image_size=28), spec)
    assert recovered == (
        "lit_cifar.models.NotebookCNN",
        {"in_channels": 3, "width": 8, "hidden_units": 16, "image_size": 28},
    )

    class Unstored(nn.Module):  # keeps no attribute for its argument, and is not importable
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.layer = nn.Linear(width, 2)

    assert recover_init_args(Unstored(width=6)) is None
    from tests.thirdparty.gray import ResidualNet

    net = ResidualNet(spec, width=4)
    assert recover_init_args(net, spec) == ("tests.thirdparty.gray.ResidualNet", {"in_channels": 1, "width": 4})
    del net.width  # its default, 8, rebuilds a network of other shapes: not recovered
    assert recover_init_args(net, spec) is None


def test_honoured_techniques_may_name_only_bn_and_dropout() -> None:
    from lit_cifar.models import check_backbone

    class Declares(nn.Module):
        def honoured_techniques(self) -> set[str]:
            return {"bn", "l2"}

    with pytest.raises(ValueError, match=r"Declares.honoured_techniques\(\) names \['l2'\]: it may name only bn"):
        check_backbone(RegularizationSpec(), Declares(), [])
