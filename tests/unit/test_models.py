"""Model zoo tests, parametrised over the registry so a newly registered model is covered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lq.errors import LqError
from lq.models import create_model, list_models
from lq.quant.points import ActQuantPoint

MODELS = list_models()
SHAPES = [(1, 8), (3, 32)]  # (channels, side): the offline 8x8 digits and CIFAR


def _make(
    name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 7, **kw
) -> nn.Module:
    return create_model(
        name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
    )


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_known_models() -> None:
    assert {"resnet8", "resnet20", "resnet32", "resnet56", "mobilenetv2"} <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels,side", SHAPES)
def test_output_shape(name: str, in_channels: int, side: int) -> None:
    model = _make(name, in_channels, side, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, side, side))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def _resnet_params(depth: int, in_channels: int, num_classes: int) -> int:
    """Parameter count of the CIFAR ResNet, by hand.

    With n = (depth-2)/6 blocks per stage, widths w = (16, 32, 64), 3x3 convs without bias
    and BN contributing 2 parameters per channel:
      stem           9*in*16 + 2*16
      stage s, first 9*w_{s-1}*w_s + 9*w_s^2 + 2*2*w_s  (+ 1x1 shortcut w_{s-1}*w_s + 2*w_s, s > 1)
      stage s, other (n-1) * (2*9*w_s^2 + 2*2*w_s)
      head           64*C + C
    ResNet-20, 3 input channels, C = 100: 278,324 (about 0.28 M).
    """
    n = (depth - 2) // 6
    widths = (16, 32, 64)
    total = 9 * in_channels * 16 + 2 * 16
    prev = 16
    for s, w in enumerate(widths):
        total += 9 * prev * w + 9 * w * w + 4 * w
        if s > 0:
            total += prev * w + 2 * w
        total += (n - 1) * (18 * w * w + 4 * w)
        prev = w
    return total + 64 * num_classes + num_classes


def test_resnet20_reference_parameter_count() -> None:
    assert _resnet_params(20, 3, 100) == 278_324
    assert _n_params(_make("resnet20", 3, 32, num_classes=100)) == 278_324


@pytest.mark.parametrize("name,depth", [("resnet8", 8), ("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet_parameter_count_matches_formula(name: str, depth: int, in_channels: int) -> None:
    model = _make(name, in_channels, 32, num_classes=10)
    assert _n_params(model) == _resnet_params(depth, in_channels, 10)


def test_resnet20_layer_inventory() -> None:
    model = _make("resnet20", 3, 32, num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # stem + 9 blocks x 2
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(shortcuts) == 2 and all(c.stride == (2, 2) for c in shortcuts)
    assert len(convs) == 21
    assert linears == [model.head]
    assert model.head.in_features == 64 and model.head.out_features == 100
    assert all(c.bias is None for c in convs)


def test_mobilenetv2_matches_imagenet_parameter_count() -> None:
    # Strides change no parameter, so with 1000 classes the CIFAR variant must have exactly
    # torchvision's MobileNetV2 count (3,504,872, its documented `num_params`).
    model = _make("mobilenetv2", 3, 32, num_classes=1000)
    assert _n_params(model) == 3_504_872


def test_mobilenetv2_width_multiplier() -> None:
    thin = _make("mobilenetv2", 3, 32, width_mult=0.5)
    full = _make("mobilenetv2", 3, 32)
    assert _n_params(thin) < _n_params(full)
    assert thin.num_features == 1280  # the last conv is not thinned
    assert thin(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(LqError, match="width_mult"):
        _make("mobilenetv2", width_mult=0)


# ActQuantPoints per architecture, by hand:
#   ResNet-(6n+2): stem 1 + 3 stages * n blocks * 2 = depth - 1   (ResNet-20: 1 + 9*2 = 19)
#   MobileNetV2:   stem 1 + first block (t=1: dw, project) 2
#                  + 3 per t=6 block * (2+3+4+3+3+1 = 16) + last 1x1 conv 1 = 52
EXPECTED_ACT_POINTS = {"resnet8": 7, "resnet20": 19, "resnet32": 31, "resnet56": 55, "mobilenetv2": 52}


@pytest.mark.parametrize("name,expected", sorted(EXPECTED_ACT_POINTS.items()))
def test_act_quant_point_count(name: str, expected: int) -> None:
    model = _make(name)
    assert sum(isinstance(m, ActQuantPoint) for m in model.modules()) == expected


@pytest.mark.parametrize("name", MODELS)
def test_every_act_quant_point_is_used_once(name: str) -> None:
    """A marker outside the forward path would leave an activation unquantized."""
    model = _make(name, 1, 8).eval()
    calls: dict[str, int] = {}
    points = {n: m for n, m in model.named_modules() if isinstance(m, ActQuantPoint)}
    assert points, f"{name} marks no activation for quantization"
    for n, m in points.items():
        m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    assert calls == {n: 1 for n in points}


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_head_of_features(name: str) -> None:
    model = _make(name, 1, 8).eval()
    assert isinstance(model.head, nn.Linear)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape == (3, model.head.in_features) == (3, model.num_features)
    torch.testing.assert_close(model.head(feats), out, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_initial_weights(name: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return _make(name, 1, 8).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(LqError) as err:
        _make("resnet21")
    msg = str(err.value)
    assert "resnet21" in msg
    assert all(name in msg for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_image_too_small_is_rejected(name: str) -> None:
    with pytest.raises(LqError, match="image_size"):
        _make(name, 1, 1)


def test_resnet_image_size_bounds() -> None:
    for bad in (3, (4, 3), 0):
        with pytest.raises(LqError, match="image_size"):
            _make("resnet20", 1, bad)
    with pytest.raises(LqError, match="image_size"):
        _make("resnet20", 1, "8")
    assert _make("resnet20", 1, 4)(torch.randn(2, 1, 4, 4)).shape == (2, 7)
    assert _make("resnet20", 1, (4, 6))(torch.randn(2, 1, 4, 6)).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_bad_arguments_are_lq_errors(name: str) -> None:
    with pytest.raises(LqError, match="num_classes"):
        _make(name, num_classes=0)
    with pytest.raises(LqError, match="in_channels"):
        _make(name, in_channels=0)
    with pytest.raises(LqError, match="no_such_option"):
        _make(name, no_such_option=1)


def test_resnet_depth_checks() -> None:
    with pytest.raises(LqError, match="depth"):
        _make("resnet20", depth=32)
    from lq.models.resnet import ResNet

    with pytest.raises(LqError, match="6n\\+2"):
        ResNet(depth=21)
    assert isinstance(ResNet(depth=8, num_classes=3, in_channels=1, image_size=8), nn.Module)


def test_create_model_records_its_config() -> None:
    model = _make("resnet20", 1, 8, num_classes=10)
    assert model.model_cfg == dict(name="resnet20", num_classes=10, in_channels=1, image_size=8)


@pytest.mark.parametrize("name", MODELS)
def test_gradient_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = _make(name, 1, 8, num_classes=5).train()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", MODELS)
def test_quantize_model_converts_every_conv_and_point(name: str) -> None:
    from lq.quant.config import QuantConfig
    from lq.quant.convert import quantize_model
    from lq.quant.modules import ActQuantizer, QConv2d, QLinear

    torch.manual_seed(0)
    model = _make(name, 1, 8, num_classes=5).eval()
    n_points = sum(isinstance(m, ActQuantPoint) for m in model.modules())
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)

    assert quantize_model(model, QuantConfig(weight_bits=4, act_bits=4)) is model
    assert not any(isinstance(m, ActQuantPoint) for m in model.modules())
    assert sum(isinstance(m, ActQuantizer) for m in model.modules()) == n_points
    assert sum(isinstance(m, QConv2d) for m in model.modules()) == n_convs
    assert all(isinstance(m, QConv2d) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert type(model.head) is nn.Linear and not isinstance(model.head, QLinear)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model.head(model.forward_features(x)), out, rtol=0, atol=0)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)  # 4-bit weights and activations change the output

    model.train()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())
