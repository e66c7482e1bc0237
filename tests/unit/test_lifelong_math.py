"""Hand-computed checks of the lifelong-learning math: BaLL weights and loss, importance, penalty.

Every expected number is worked out in the comments next to it, never copied from a run.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lq.errors import LqError
from lq.lifelong.ball import ball_logits, ball_loss, ball_weights
from lq.lifelong.importance import (
    combine,
    noise_amplitude,
    quant_noise_importance,
    squared_grad_importance,
    uniform_noise,
)
from lq.lifelong.penalty import quadratic_penalty, snapshot


class TinyNet(nn.Module):
    """The lq model interface: forward_features(x) -> (B, D), a float `head`, forward = head(features)."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.forward_features(x))


def linear_net(weight, bias):
    """Identity features (no body parameters) and a 2 -> 1 linear head with the given values."""
    head = nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
        head.bias.copy_(torch.tensor(bias))
    return TinyNet(nn.Identity(), head)


def small_classifier(seed=0, classes=4):
    """A 3 -> 5 -> classes net with BatchNorm and Dropout, so mode changes are observable."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5))
    return TinyNet(body, nn.Linear(5, classes))


def mse_loss(out, y):
    return ((out.squeeze(1) - y) ** 2).mean()


# --------------------------------------------------------------------------------------------
# BaLL weights (SPEC section 3)
# --------------------------------------------------------------------------------------------


def test_ball_weights_spec_example():
    # counts {a:100, b:100, c:10}: N = 210, C_t = 3.
    # w = 1 / ((n/N + 1/C_t) * C_t) = 1 / (1 + C_t * n / N)
    # a, b: 1 / (1 + 300/210) = 1 / (1 + 10/7) = 7/17 = 0.41176...
    # c:    1 / (1 + 30/210)  = 1 / (1 + 1/7)  = 7/8  = 0.875
    # class 3 is absent -> 1.
    w = ball_weights({0: 100, 1: 100, 2: 10}, num_classes=4)
    assert w.shape == (4,)
    assert w.dtype == torch.float32
    assert [round(v, 4) for v in w.tolist()] == [0.4118, 0.4118, 0.875, 1.0]
    assert torch.allclose(w, torch.tensor([7 / 17, 7 / 17, 7 / 8, 1.0]))


def test_ball_weights_in_unit_interval():
    g = torch.Generator().manual_seed(1)
    counts = {c: int(n) for c, n in enumerate(torch.randint(1, 500, (30,), generator=g))}
    w = ball_weights(counts, num_classes=40)
    assert bool(((w > 0) & (w <= 1)).all())
    assert torch.equal(w[30:], torch.ones(10))
    # The rarer class gets the larger weight.
    w2 = ball_weights({0: 5, 1: 50}, num_classes=2)
    assert w2[0] > w2[1]


def test_ball_weights_zero_count_is_absent():
    # {0: 10, 1: 0}: only class 0 is present, C_t = 1, N = 10 -> w0 = 1 / (1 + 1*10/10) = 0.5.
    w = ball_weights({0: 10, 1: 0}, num_classes=2)
    assert torch.allclose(w, torch.tensor([0.5, 1.0]))


def test_ball_weights_empty_counts_all_ones():
    assert torch.equal(ball_weights({}, num_classes=3), torch.ones(3))


@pytest.mark.parametrize(
    "counts,num_classes",
    [({3: 1}, 3), ({-1: 1}, 3), ({0: -2}, 3), ({0: 1}, 0)],
)
def test_ball_weights_invalid(counts, num_classes):
    with pytest.raises(LqError):
        ball_weights(counts, num_classes)


# --------------------------------------------------------------------------------------------
# BaLL loss
# --------------------------------------------------------------------------------------------


def test_additive_with_zero_weights_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    got = ball_loss(z, y, torch.zeros(5), form="additive")
    assert torch.allclose(got, F.cross_entropy(z, y))


def test_multiplicative_with_unit_weights_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g)
    y = torch.tensor([4, 3, 2, 1, 0, 0])
    got = ball_loss(z, y, torch.ones(5), form="multiplicative")
    assert torch.allclose(got, F.cross_entropy(z, y))


def test_additive_two_class_by_hand():
    # z = [0, 0] -> softmax = [0.5, 0.5]; w = [1, 0.5] -> z' = [0.5, 0.25].
    # target 0: CE = -log(e^0.5 / (e^0.5 + e^0.25)) = log(1 + e^-0.25)
    # target 1: CE = -log(e^0.25 / (e^0.5 + e^0.25)) = log(1 + e^0.25)
    z = torch.zeros(2, 2)
    w = torch.tensor([1.0, 0.5])
    zp = ball_logits(z, w, form="additive")
    assert torch.allclose(zp, torch.tensor([[0.5, 0.25], [0.5, 0.25]]))
    per = ball_loss(z, torch.tensor([0, 1]), w, form="additive", reduction="none")
    expected = torch.tensor([math.log(1 + math.exp(-0.25)), math.log(1 + math.exp(0.25))])
    assert per.shape == (2,)
    assert torch.allclose(per, expected)
    mean = ball_loss(z, torch.tensor([0, 1]), w, form="additive")
    assert torch.allclose(mean, expected.mean())
    total = ball_loss(z, torch.tensor([0, 1]), w, form="additive", reduction="sum")
    assert torch.allclose(total, expected.sum())


def test_additive_second_example_by_hand():
    # z = [ln 3, 0] -> softmax = [3/4, 1/4]; w = [0, 1] -> z' = [ln 3, 0.25].
    # target 1: CE = -0.25 + log(3 + e^0.25)
    z = torch.tensor([[math.log(3.0), 0.0]])
    got = ball_loss(z, torch.tensor([1]), torch.tensor([0.0, 1.0]), form="additive")
    assert torch.allclose(got, torch.tensor(-0.25 + math.log(3 + math.exp(0.25))))


def test_multiplicative_by_hand():
    # z = [2, 1], w = [0.5, 1] -> z' = [1, 1] -> CE = log 2 whatever the target.
    z = torch.tensor([[2.0, 1.0]])
    got = ball_loss(z, torch.tensor([0]), torch.tensor([0.5, 1.0]), form="multiplicative")
    assert torch.allclose(got, torch.tensor(math.log(2.0)))


def test_additive_gradient_flows_through_softmax():
    # Design choice (as in the reference): softmax is NOT detached.
    # z = [0, 0], w = [1, 0]: z'_0 = z_0 + s_0 with s_0 = sigmoid(z_0 - z_1) = 0.5,
    # d z'_0 / d z_0 = 1 + s_0 (1 - s_0) = 1.25 (it would be 1.0 with a detached softmax).
    z = torch.zeros(1, 2, requires_grad=True)
    zp = ball_logits(z, torch.tensor([1.0, 0.0]), form="additive")
    (g,) = torch.autograd.grad(zp[0, 0], z)
    assert torch.allclose(g, torch.tensor([[1.25, -0.25]]))


def test_ball_unknown_form_and_bad_shapes():
    z = torch.zeros(2, 3)
    y = torch.tensor([0, 1])
    with pytest.raises(LqError):
        ball_loss(z, y, torch.ones(3), form="exponential")
    with pytest.raises(LqError):
        ball_logits(z, torch.ones(3), form="bogus")
    with pytest.raises(LqError):
        ball_loss(z, y, torch.ones(4))  # one weight per class
    with pytest.raises(LqError):
        ball_loss(z, y, torch.ones(3), reduction="median")


# --------------------------------------------------------------------------------------------
# Penalty
# --------------------------------------------------------------------------------------------


def test_penalty_zero_at_anchor():
    model = small_classifier()
    anchor = snapshot(model)
    imp = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    assert quadratic_penalty(model, anchor, imp, lam=100.0).item() == 0.0


def test_penalty_hand_value_and_gradient():
    # theta: w = [1, 2], b = 0.5; anchor: w = [0, 0], b = 0.5; F: w = [1, 3], b = 10; lam = 2.
    # penalty = 2 * (1*1^2 + 3*2^2 + 10*0^2) = 2 * 13 = 26
    # grad    = 2 lam F (theta - anchor): w = 4 * [1*1, 3*2] = [4, 24]; b = 0
    model = linear_net([[1.0, 2.0]], [0.5])
    anchor = {"head.weight": torch.tensor([[0.0, 0.0]]), "head.bias": torch.tensor([0.5])}
    imp = {"head.weight": torch.tensor([[1.0, 3.0]]), "head.bias": torch.tensor([10.0])}
    pen = quadratic_penalty(model, anchor, imp, lam=2.0)
    assert torch.allclose(pen, torch.tensor(26.0))
    pen.backward()
    assert torch.allclose(model.head.weight.grad, torch.tensor([[4.0, 24.0]]))
    assert torch.allclose(model.head.bias.grad, torch.tensor([0.0]))


def test_penalty_gradient_matches_formula():
    model = small_classifier(seed=3)
    anchor = snapshot(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    imp = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    lam = 0.7
    pen = quadratic_penalty(model, anchor, imp, lam=lam)
    names = list(imp)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(pen, [params[n] for n in names])
    for n, gr in zip(names, grads):
        assert torch.allclose(gr, 2 * lam * imp[n] * (params[n].detach() - anchor[n]), atol=1e-6)


def test_penalty_only_over_importance_names():
    # Only head.weight is in the importance: the bias offset (5) must not count.
    # penalty = 1 * (1 * (1 - 0)^2 + 1 * (2 - 0)^2) = 5
    model = linear_net([[1.0, 2.0]], [5.0])
    anchor = {"head.weight": torch.zeros(1, 2), "head.bias": torch.zeros(1)}
    imp = {"head.weight": torch.ones(1, 2)}
    assert torch.allclose(quadratic_penalty(model, anchor, imp, lam=1.0), torch.tensor(5.0))


def test_penalty_errors():
    model = linear_net([[1.0, 2.0]], [0.0])
    imp = {"head.weight": torch.ones(1, 2)}
    with pytest.raises(LqError):  # anchor lacks a name in importance
        quadratic_penalty(model, {}, imp, lam=1.0)
    with pytest.raises(LqError):  # importance names a parameter the model lacks
        quadratic_penalty(model, {"nope": torch.ones(1)}, {"nope": torch.ones(1)}, lam=1.0)
    with pytest.raises(LqError):  # shape mismatch
        quadratic_penalty(model, {"head.weight": torch.zeros(2)}, {"head.weight": torch.ones(2)}, 1.0)


def test_snapshot_is_detached_clone():
    model = linear_net([[1.0, 2.0]], [0.0])
    snap = snapshot(model)
    assert set(snap) == {"head.weight", "head.bias"}
    assert not snap["head.weight"].requires_grad
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert torch.equal(snap["head.weight"], torch.tensor([[1.0, 2.0]]))


# --------------------------------------------------------------------------------------------
# Squared-gradient (EWC-style) importance
# --------------------------------------------------------------------------------------------


def hand_batches():
    # Batch 1: x = [[1,0],[0,1]], y = [0,0]. With w = [1,2], b = 0: out = [1, 2].
    #   L = mean((out - y)^2) -> dL/dout_i = 2 (out_i - y_i) / 2 = [1, 2]
    #   dL/dw = 1*[1,0] + 2*[0,1] = [1, 2]; dL/db = 3  -> squared: [1, 4], 9
    # Batch 2: x = [[1,1]], y = [1]. out = 3, dL/dout = 2 (3 - 1) = 4
    #   dL/dw = [4, 4]; dL/db = 4                      -> squared: [16, 16], 16
    # Mean over the two batches: w = [(1+16)/2, (4+16)/2] = [8.5, 10]; b = (9+16)/2 = 12.5
    return [
        (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.0])),
        (torch.tensor([[1.0, 1.0]]), torch.tensor([1.0])),
    ]


def test_squared_grad_importance_by_hand():
    model = linear_net([[1.0, 2.0]], [0.0])
    imp = squared_grad_importance(model, mse_loss, hand_batches())
    assert set(imp) == {"head.weight", "head.bias"}
    assert torch.allclose(imp["head.weight"], torch.tensor([[8.5, 10.0]]))
    assert torch.allclose(imp["head.bias"], torch.tensor([12.5]))
    assert not imp["head.weight"].requires_grad


def test_squared_grad_importance_param_subset():
    model = linear_net([[1.0, 2.0]], [0.0])
    imp = squared_grad_importance(model, mse_loss, hand_batches(), params=["head.bias"])
    assert set(imp) == {"head.bias"}
    assert torch.allclose(imp["head.bias"], torch.tensor([12.5]))
    with pytest.raises(LqError):
        squared_grad_importance(model, mse_loss, hand_batches(), params=["missing"])


def test_importance_uses_only_passed_data():
    # The design guarantee: the function sees only `batches`; data the caller keeps elsewhere
    # (a test split) cannot influence it.
    model = linear_net([[1.0, 2.0]], [0.0])
    test_x = torch.tensor([[3.0, -1.0]])
    before = squared_grad_importance(model, mse_loss, hand_batches())
    test_x.mul_(100.0)
    after = squared_grad_importance(model, mse_loss, hand_batches())
    for n in before:
        assert torch.equal(before[n], after[n])
    # ...whereas changing the passed data does change it.
    other = [(torch.tensor([[2.0, 0.0]]), torch.tensor([0.0]))]
    # out = 2, dL/dout = 4 -> dL/dw = [8, 0] -> squared [64, 0]
    assert torch.allclose(
        squared_grad_importance(model, mse_loss, other)["head.weight"], torch.tensor([[64.0, 0.0]])
    )


def test_importance_empty_batches_is_error():
    model = linear_net([[1.0, 2.0]], [0.0])
    with pytest.raises(LqError):
        squared_grad_importance(model, mse_loss, [])


@pytest.mark.parametrize("train_mode", [True, False])
def test_importance_restores_mode_and_grads(train_mode):
    model = small_classifier()
    model.train(train_mode)
    model.body[1].train(not train_mode)  # a mixed state must come back exactly
    modes = {n: m.training for n, m in model.named_modules()}
    bn_mean = model.body[1].running_mean.clone()
    params = dict(model.named_parameters())
    old_grad = torch.full_like(params["head.weight"], 7.0)
    params["head.weight"].grad = old_grad.clone()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 3])) for _ in range(2)]

    imp = squared_grad_importance(model, F.cross_entropy, batches)

    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(model.body[1].running_mean, bn_mean)  # evaluated in eval mode
    assert torch.equal(params["head.weight"].grad, old_grad)
    for n, p in params.items():
        if n != "head.weight":
            assert p.grad is None
    assert all(bool((v >= 0).all()) for v in imp.values())
    assert any(bool((v > 0).any()) for v in imp.values())


def test_importance_is_per_batch_not_per_sample():
    # One batch of two samples: gradient of the batch-mean loss, squared (not mean of squares).
    # Batch 1 of hand_batches alone: dL/dw = [1, 2] -> [1, 4], dL/db = 3 -> 9.
    # Per sample it would be: sample 1 (out 1, L = 1^2): dL/dw = 2*1*[1,0] = [2,0] -> [4,0];
    # sample 2 (out 2, L = 2^2): dL/dw = 2*2*[0,1] = [0,4] -> [0,16]; mean [2, 8] (not this).
    model = linear_net([[1.0, 2.0]], [0.0])
    imp = squared_grad_importance(model, mse_loss, hand_batches()[:1])
    assert torch.allclose(imp["head.weight"], torch.tensor([[1.0, 4.0]]))
    assert torch.allclose(imp["head.bias"], torch.tensor([9.0]))


def test_combine_sums():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([3.0])}
    b = {"x": torch.tensor([0.5, 0.5]), "z": torch.tensor([4.0])}
    c = combine(a, b)
    assert torch.equal(c["x"], torch.tensor([1.5, 2.5]))
    assert torch.equal(c["y"], torch.tensor([3.0]))
    assert torch.equal(c["z"], torch.tensor([4.0]))
    assert torch.equal(a["x"], torch.tensor([1.0, 2.0]))  # inputs untouched
    with pytest.raises(LqError):
        combine(a, {"x": torch.ones(3)})
    with pytest.raises(LqError):
        combine()


# --------------------------------------------------------------------------------------------
# Quantization-noise importance
# --------------------------------------------------------------------------------------------


def test_noise_amplitude():
    # r / (2^k - 1): r = 2, k = 4 -> 2/15
    assert noise_amplitude(2.0, 4) == pytest.approx(2 / 15)
    with pytest.raises(LqError):
        noise_amplitude(2.0, 0)


def test_uniform_noise_range_and_seed():
    a = 0.3
    n1 = uniform_noise((50, 4, 8), a, generator=torch.Generator().manual_seed(0))
    n2 = uniform_noise((50, 4, 8), a, generator=torch.Generator().manual_seed(0), device="cpu")
    assert n1.shape == (50, 4, 8)
    assert torch.equal(n1, n2)
    # The reference's (rand * 2 - 1) * a: uniform in [-a, a]; with 1600 draws the span nearly fills it.
    assert float(n1.min()) >= -a and float(n1.max()) <= a
    assert float(n1.max() - n1.min()) > 0.9 * 2 * a


def noise_batches():
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(6, 3, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(2)]


def test_quant_noise_importance_deterministic():
    model = small_classifier(seed=2)
    run = lambda seed: quant_noise_importance(  # noqa: E731
        model, F.cross_entropy, noise_batches(), amplitude=0.5, draws=20, weight=0.5,
        generator=torch.Generator().manual_seed(seed))
    r1, r2, r3 = run(3), run(3), run(4)
    assert set(r1) == {n for n, _ in model.named_parameters()}
    for n in r1:
        assert torch.equal(r1[n], r2[n])
    assert any(not torch.equal(r1[n], r3[n]) for n in r1)
    assert float(r1["head.weight"].sum()) > 0
    assert float(r1["body.0.weight"].sum()) > 0  # the gradient reaches the feature extractor


def test_quant_noise_importance_weight_zero_is_the_plain_importance():
    # weight 0 removes the term: F is the squared gradient of the task loss alone.
    model = small_classifier(seed=2)
    plain = squared_grad_importance(model, F.cross_entropy, noise_batches())
    noisy = quant_noise_importance(model, F.cross_entropy, noise_batches(), amplitude=0.5, draws=4, weight=0.0,
                                   generator=torch.Generator().manual_seed(0))
    for n in plain:
        assert torch.allclose(plain[n], noisy[n], rtol=1e-6, atol=1e-12)


def test_quant_noise_importance_restores_state_and_validates():
    model = small_classifier(seed=2)
    model.train()
    bn_mean = model.body[1].running_mean.clone()
    quant_noise_importance(model, F.cross_entropy, noise_batches(), amplitude=0.2, draws=4,
                           generator=torch.Generator().manual_seed(0))
    assert model.training and model.body[3].training
    assert torch.equal(model.body[1].running_mean, bn_mean)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(LqError):
        quant_noise_importance(model, F.cross_entropy, noise_batches(), amplitude=-1.0)
    with pytest.raises(LqError):
        quant_noise_importance(model, F.cross_entropy, noise_batches(), amplitude=0.1, draws=0)
    with pytest.raises(LqError):
        quant_noise_importance(model, F.cross_entropy, [], amplitude=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths():
    model = small_classifier(seed=2).cuda()
    batches = [(x.cuda(), y.cuda()) for x, y in noise_batches()]
    imp = squared_grad_importance(model, F.cross_entropy, batches)
    qn = quant_noise_importance(model, F.cross_entropy, batches, amplitude=0.3, draws=8,
                                generator=torch.Generator(device="cuda").manual_seed(0))
    qn_cpu_gen = quant_noise_importance(model, F.cross_entropy, batches, amplitude=0.3, draws=8,
                                        generator=torch.Generator().manual_seed(0))
    both = combine(imp, qn, qn_cpu_gen)
    assert all(v.is_cuda for v in both.values())
    pen = quadratic_penalty(model, snapshot(model), both, lam=1.0)
    assert pen.is_cuda and pen.item() == 0.0
    w = ball_weights({0: 3, 1: 9}, 4).cuda()
    loss = ball_loss(model(batches[0][0]), batches[0][1], w)
    assert loss.is_cuda
