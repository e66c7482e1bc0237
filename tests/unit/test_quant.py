"""Tests for lq.quant: grids, straight-through gradients, LSQ step gradient, module swap."""

import math

import pytest
import torch
from torch import nn

from lq.errors import LqError
from lq.quant import functions as F
from lq.quant.config import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, QuantConfig
from lq.quant.convert import model_bit_widths, quantize_model
from lq.quant.modules import ActQuantizer, QConv2d, QLinear, WeightQuantizer
from lq.quant.points import ActQuantPoint

BITS = list(range(2, 9))
# Quantizers with a 1-bit form (power-of-two levels spend one bit on zero, so they start at 2).
ONE_BIT_WEIGHT_QUANTIZERS = sorted(n for n, q in WEIGHT_QUANTIZERS.items() if q.min_bits == 1)


def heavy_tailed(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """randn * 10 with a few huge outliers: breaks grids that are not clamped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 10
    x[:8] = torch.tensor([500.0, -800.0, 1e3, -1e3, 60.0, -75.0, 250.0, -40.0])
    return x


def tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 8, 3, 3, generator=g), torch.rand(2000, generator=g) * 4 - 1, heavy_tailed()]


def quantize_weight(name: str, w: torch.Tensor, bits: int, act_range: float = 2.0) -> torch.Tensor:
    """Run a registered weight quantizer through its module (LSQ needs a step)."""
    return WeightQuantizer(bits, name, act_range)(w)


def quantize_act(name: str, x: torch.Tensor, bits: int) -> torch.Tensor:
    return ActQuantizer(bits, name)(x)


def n_levels(x: torch.Tensor) -> int:
    return torch.unique(x.detach()).numel()


# --- grids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WEIGHT_QUANTIZERS))
@pytest.mark.parametrize("bits", BITS)
def test_weight_quantizers_use_at_most_2_pow_k_levels(name, bits):
    for w in tensors():
        q = quantize_weight(name, w, bits)
        assert q.shape == w.shape
        assert torch.isfinite(q).all()
        assert n_levels(q) <= 2**bits, (name, bits, n_levels(q))


@pytest.mark.parametrize("name", sorted(ACT_QUANTIZERS))
@pytest.mark.parametrize("bits", BITS)
def test_act_quantizers_use_at_most_2_pow_k_levels(name, bits):
    for x in tensors():
        q = quantize_act(name, x, bits)
        assert n_levels(q) <= 2**bits, (name, bits, n_levels(q))
        assert (q >= 0).all()


def test_unclamped_reference_formula_breaks_the_level_bound():
    """The reference's round(x_hat * (2^k - 1)) is what the clamp prevents: check the data bites."""
    w = heavy_tailed()
    mu, sd = w.mean(), w.std()
    x_hat = (w - mu) / sd * (2.0 / 4)
    reference = torch.round(x_hat * 15) / 15
    assert n_levels(reference) > 16
    assert n_levels(F.proxq_weight(w, 4, 2.0)) <= 16


def test_proxq_grid_is_the_symmetric_k_bit_grid():
    q = F.proxq_weight(heavy_tailed(), 3, 2.0)
    grid = torch.arange(8) * 2 / 7 - 1
    assert torch.allclose(torch.unique(q), grid, atol=1e-6)


# --- hand-computed examples --------------------------------------------------------------------


def test_quantize_unsigned_hand_example():
    x = torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.9, 1.7])
    # clamp -> [0, .1, .2, .5, .9, 1]; * 3 -> [0, .3, .6, 1.5, 2.7, 3]
    # round (half to even) -> [0, 0, 1, 2, 3, 3]
    expected = torch.tensor([0, 0, 1, 2, 3, 3]) / 3
    assert torch.allclose(F.quantize_unsigned(x, 2), expected)


def test_proxq_hand_example_k2():
    w = torch.tensor([-10.0, -1.0, 1.0, 10.0])
    # mean 0, unbiased std sqrt(202 / 3) = 8.2057
    # r = 2: x_hat = z / 2 = [-.609, -.061, .061, .609]
    #        (x_hat + 1) / 2 * 3 = [.586, 1.41, 1.59, 2.41] -> [1, 1, 2, 2]
    assert torch.allclose(F.proxq_weight(w, 2, 2.0), torch.tensor([-1, -1, 1, 1]) / 3)
    # r = 4: x_hat = z = [-1.22, -.122, .122, 1.22]
    #        clamp((x_hat + 1) / 2) * 3 = [0, 1.32, 1.68, 3] -> [0, 1, 2, 3] (ends clamped)
    assert torch.allclose(F.proxq_weight(w, 2, 4.0), torch.tensor([-3.0, -1, 1, 3]) / 3)


def test_proxq_cdf_hand_example_k2():
    w = torch.tensor([-10.0, -1.0, 1.0, 10.0])
    # Phi(z) * 3 = [.334, 1.35, 1.65, 2.67] -> [0, 1, 2, 3]
    assert torch.allclose(F.proxq_cdf_weight(w, 2), torch.tensor([-3.0, -1, 1, 3]) / 3)


def test_dorefa_hand_example_k2():
    w = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    # tanh / (2 * .964) + .5 = [0, .448, .552, 1]; * 3 -> [0, 1.34, 1.66, 3] -> [0, 1, 2, 3]
    assert torch.allclose(F.dorefa_weight(w, 2), torch.tensor([-3.0, -1, 1, 3]) / 3)


# --- straight-through gradients ----------------------------------------------------------------


def test_unsigned_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-0.5, 0.2, 0.55, 0.7, 1.5], requires_grad=True)
    F.quantize_unsigned(x, 4).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0]))


def test_lsq_act_gradient_wrt_x_is_one_inside_range():
    x = torch.tensor([-1.0, 0.3, 1.2, 2.9, 10.0], requires_grad=True)
    F.lsq_quantize(x, 4, torch.tensor(0.2), signed=False).sum().backward()  # range [0, 3]
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0]))


@pytest.mark.parametrize("name, bits", [(name, bits) for name in sorted(WEIGHT_QUANTIZERS) for bits in (1, 2, 4, 8)
                                         if bits >= WEIGHT_QUANTIZERS[name].min_bits])
def test_weight_gradients_pass_through(name, bits):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 4, 3, 3, generator=g).requires_grad_()
    c = torch.randn(w.shape, generator=g)  # a plain sum is blind: standardised weights sum to 0
    (quantize_weight(name, w, bits) * c).sum().backward()
    assert torch.isfinite(w.grad).all()
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["proxq", "proxq_cdf"])
def test_proxq_constant_tensor_has_no_nan(name):
    w = torch.full((4, 3), 0.7, requires_grad=True)
    q = quantize_weight(name, w, 4)
    (q * torch.arange(12.0).view(4, 3)).sum().backward()
    assert torch.isfinite(q).all() and n_levels(q) == 1
    assert torch.isfinite(w.grad).all()


def test_dorefa_zero_tensor_has_no_nan():
    w = torch.zeros(5, requires_grad=True)
    q = F.dorefa_weight(w, 4)
    q.sum().backward()
    assert torch.isfinite(q).all() and torch.isfinite(w.grad).all()


# --- ProxQ invariance --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [lambda w, k: F.proxq_weight(w, k, 2.0), F.proxq_cdf_weight])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_proxq_is_invariant_to_positive_affine_maps(fn, bits):
    w = torch.randn(64, 16, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(fn(w, bits), fn(3.7 * w - 1.25, bits), atol=1e-9, rtol=0)
    assert not torch.allclose(fn(w, bits), fn(-w, bits))  # a > 0 matters: the test can fail


# --- LSQ ---------------------------------------------------------------------------------------


def test_lsq_step_gradient_matches_hand_derivation():
    # signed 2 bit: Q_N = 2, Q_P = 1. x / s = [.6, -1.4, 4, -10]
    # -> clamp [.6, -1.4, 1, -2] -> round [1, -1, 1, -2]
    # dq/ds = round(v) - v inside, the clamp bound outside: [.4, .4, 1, -2], sum -.2
    # grad scale g = 1 / sqrt(N * Q_P) = 1 / sqrt(4) -> ds = -.1
    x = torch.tensor([0.3, -0.7, 2.0, -5.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    q = F.lsq_quantize(x, 2, s, signed=True)
    assert torch.allclose(q, torch.tensor([0.5, -0.5, 0.5, -1.0]))
    q.sum().backward()
    assert math.isclose(s.grad.item(), -0.1, abs_tol=1e-6)
    assert torch.equal(x.grad, torch.tensor([1.0, 1, 0, 0]))


def test_lsq_unsigned_step_gradient_matches_hand_derivation():
    # unsigned 2 bit: Q_N = 0, Q_P = 3. x / s = [-1, .4, 1.7, 5]
    # -> clamp [0, .4, 1.7, 3] -> round [0, 0, 2, 3]
    # dq/ds = [0 (clamped at -Q_N = 0), -.4, .3, 3], sum 2.9; g = 1 / sqrt(4 * 3)
    x = torch.tensor([-1.0, 0.4, 1.7, 5.0])
    s = torch.tensor(1.0, requires_grad=True)
    F.lsq_quantize(x, 2, s, signed=False).sum().backward()
    assert math.isclose(s.grad.item(), 2.9 / math.sqrt(12), rel_tol=1e-5)


def test_lsq_init_rule():
    x = torch.tensor([1.0, -3.0, 2.0, 0.0])  # mean |x| = 1.5
    assert math.isclose(F.lsq_init_step(x, 4, signed=True).item(), 2 * 1.5 / math.sqrt(7), rel_tol=1e-6)
    assert math.isclose(F.lsq_init_step(x, 4, signed=False).item(), 2 * 1.5 / math.sqrt(15), rel_tol=1e-6)


def test_lsq_module_initialises_step_from_first_input_only():
    quantizer = ActQuantizer(4, "lsq")
    x = torch.tensor([1.0, -3.0, 2.0, 0.0])
    quantizer(x)
    first = quantizer.step.item()
    assert math.isclose(first, 2 * 1.5 / math.sqrt(15), rel_tol=1e-6)
    quantizer(x * 100)
    assert quantizer.step.item() == first


# --- 32 bits and 1 bit -------------------------------------------------------------------------


def test_32_bits_is_the_identity():
    x = torch.randn(10)
    for name in WEIGHT_QUANTIZERS:
        assert torch.equal(quantize_weight(name, x, 32), x)
    for name in ACT_QUANTIZERS:
        assert torch.equal(quantize_act(name, x, 32), x)
    assert F.quantize_unsigned(x, 32) is x
    assert F.proxq_weight(x, 32, 2.0) is x


@pytest.mark.parametrize("name", ONE_BIT_WEIGHT_QUANTIZERS)
def test_1_bit_weights_are_a_sign(name):
    w = heavy_tailed()
    q = quantize_weight(name, w, 1)
    low, high = torch.unique(q).tolist()
    assert low == -high and high > 0
    if name != "lsq":
        assert set(torch.unique(q).tolist()) == {-1.0, 1.0}


def test_1_bit_sign_maps_zero_to_plus_one():
    assert torch.equal(F.dorefa_weight(torch.tensor([-1.0, 0.0, 2.0]), 1), torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.equal(F.proxq_weight(torch.tensor([-1.0, 0.0, 1.0]), 1, 2.0), torch.tensor([-1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", sorted(ACT_QUANTIZERS))
def test_1_bit_activations_take_two_values(name):
    q = quantize_act(name, heavy_tailed(), 1)
    assert n_levels(q) == 2 and q.min() == 0


@pytest.mark.parametrize("bits", [0, 9, 16, 33, -1])
def test_functions_reject_unsupported_bits(bits):
    with pytest.raises(LqError, match=str(bits)):
        F.quantize_unsigned(torch.rand(3), bits)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["weight_bits", "act_bits"])
@pytest.mark.parametrize("bits", [0, 9, 33])
def test_config_rejects_bad_bits(field, bits):
    with pytest.raises(LqError, match=field) as err:
        QuantConfig(**{field: bits})
    assert str(bits) in str(err.value)


@pytest.mark.parametrize("field", ["weight_quantizer", "act_quantizer"])
def test_config_rejects_unknown_names(field):
    with pytest.raises(LqError, match=field) as err:
        QuantConfig(**{field: "nope"})
    assert "nope" in str(err.value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_config_rejects_bad_act_range(value):
    with pytest.raises(LqError, match="act_range"):
        QuantConfig(act_range=value)


def test_config_accepts_the_paper_settings():
    cfg = QuantConfig(weight_bits=4, act_bits=4, act_range=0.5)
    assert (cfg.weight_bits, cfg.act_bits) == (4, 4)
    assert (cfg.weight_quantizer, cfg.act_quantizer) == ("proxq", "uniform")


# --- modules and conversion --------------------------------------------------------------------


def test_qconv_from_float_shares_parameters_and_round_trips():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    rng = torch.random.get_rng_state()
    qconv = QConv2d.from_float(conv, QuantConfig(weight_bits=4, act_bits=4))
    assert torch.equal(rng, torch.random.get_rng_state())  # conversion draws no random numbers
    assert qconv.weight is conv.weight and qconv.bias is conv.bias
    assert (qconv.weight_bits, qconv.act_bits) == (4, 4)
    assert (qconv.stride, qconv.padding) == (conv.stride, conv.padding)
    assert n_levels(qconv.quantized_weight()) <= 16
    x = torch.randn(2, 3, 8, 8)
    expected = nn.functional.conv2d(x, qconv.quantized_weight(), conv.bias, stride=2, padding=1)
    assert torch.allclose(qconv(x), expected)
    back = qconv.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight
    assert torch.equal(back(x), conv(x))


def test_qlinear_from_float_shares_parameters():
    lin = nn.Linear(5, 3)
    qlin = QLinear.from_float(lin, QuantConfig(weight_bits=2))
    assert qlin.weight is lin.weight and qlin.weight_bits == 2
    assert n_levels(qlin.quantized_weight()) <= 4
    assert type(qlin.to_float()) is nn.Linear and qlin.to_float().weight is lin.weight


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        ActQuantPoint(),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), ActQuantPoint()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def test_quantize_model_swaps_conv_and_points_and_keeps_linear_float():
    model = small_net()
    weight = model[0].weight
    out = quantize_model(model, QuantConfig(weight_bits=8, act_bits=8))
    assert out is model
    assert isinstance(model[0], QConv2d) and model[0].weight is weight
    assert isinstance(model[4][0], QConv2d)
    assert isinstance(model[2], ActQuantizer) and isinstance(model[4][1], ActQuantizer)
    assert type(model[7]) is nn.Linear
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 5)


def test_quantize_model_filter_decides():
    model = quantize_model(small_net(), QuantConfig(weight_bits=4), lambda name, m: name == "7")
    assert isinstance(model[7], QLinear)
    assert type(model[0]) is nn.Conv2d and isinstance(model[2], ActQuantPoint)


def test_reconversion_changes_bits_and_keeps_weights():
    model = quantize_model(small_net(), QuantConfig(weight_bits=8, act_bits=8))
    weights = [model[0].weight, model[4][0].weight]
    quantize_model(model, QuantConfig(weight_bits=4, act_bits=4))
    assert [model[0].weight, model[4][0].weight] == weights
    assert model[0].weight is weights[0] and model[4][0].weight is weights[1]
    assert model[0].weight_bits == 4 and model[2].bits == 4 and model[4][1].bits == 4
    assert n_levels(model[0].quantized_weight()) <= 16
    out = model[:3](torch.randn(2, 3, 6, 6))
    assert n_levels(out) <= 16


def test_reconversion_keeps_unchanged_quantizers_and_their_learned_steps():
    cfg = QuantConfig(weight_bits=4, act_bits=4, weight_quantizer="lsq", act_quantizer="lsq")
    model = quantize_model(small_net(), cfg)
    model(torch.randn(2, 3, 6, 6))
    act, weight_q = model[2], model[0].weight_quantizer
    quantize_model(model, cfg)
    assert model[2] is act and model[0].weight_quantizer is weight_q
    quantize_model(model, QuantConfig(weight_bits=2, act_bits=2, weight_quantizer="lsq", act_quantizer="lsq"))
    assert model[2] is not act and not bool(model[2].step_initialized)  # new grid, new LSQ init


def test_model_bit_widths():
    model = quantize_model(small_net(), QuantConfig(weight_bits=4, act_bits=4, weight_quantizer="lsq"))
    bits = model_bit_widths(model)
    assert bits["0.weight"] == 4 and bits["4.0.weight"] == 4
    assert bits["0.bias"] == 32 and bits["1.weight"] == 32 and bits["7.weight"] == 32
    assert bits["0.weight_quantizer.step"] == 32
    assert set(bits) == {name for name, _ in model.named_parameters()}


def test_lsq_state_dict_round_trip_gives_identical_outputs():
    cfg = QuantConfig(weight_bits=4, act_bits=4, weight_quantizer="lsq", act_quantizer="lsq")
    a = quantize_model(small_net(seed=0), cfg).eval()
    a(torch.randn(4, 3, 6, 6) * 3)  # first batch initialises the steps
    b = quantize_model(small_net(seed=1), cfg).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 6, 6)  # a different batch: b must not re-initialise from it
    assert torch.equal(a(x), b(x))
    assert b[2].step.item() == a[2].step.item()
