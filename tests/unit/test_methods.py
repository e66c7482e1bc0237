"""Lifelong methods as plugins: every registered method, and hand-checked numbers for each baseline.

Tests that apply to all methods are parametrised over `list_methods()`, so a newly registered
method is covered at once. Expected numbers are worked out in the comments, never copied from a run.
"""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
from torch import nn

from lq import config as lqconfig
from lq.errors import LqError
from lq.methods import TaskContext, create_method, list_methods, method_settings
from lq.methods.scp import sliced_importance, unit_projections
from lq.train.engine import fit
from lq.train.settings import Schedule

CPU = torch.device("cpu")
CLASSES = 3
# Each method's params block (lifelong.methods.<name>), small values for tiny models.
PENALTY = dict(ll_lambda=1.0, balanced=True, ball_form="additive")
SETTINGS = {
    "finetune": {}, "joint": {}, "ewc": PENALTY, "mas": PENALTY,
    "lifequant": {**PENALTY, "noise_importance": False, "noise_draws": 4},
    "si": {**PENALTY, "epsilon": 0.1}, "rwalk": {**PENALTY, "alpha": 0.9, "epsilon": 1e-3},
    "scp": {**PENALTY, "projections": 5},
}


def make(name, **changes):
    return create_method(name, {**SETTINGS[name], **changes})
NO_PENALTY = {"finetune", "joint"}
SCHEDULE = Schedule(epochs=1, lr=0.05, milestones=(), gamma=0.1, momentum=0.9, weight_decay=1e-4)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny; intra-op threads only add spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """The lq model interface (forward_features, head) with BatchNorm, so eval mode matters."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, CLASSES)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.forward_features(x))


class ListBatches:
    """The `lq.train.data.Batches` interface over fixed (x, y) batches."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __len__(self):
        return len(self.batches)

    def epoch(self, seed=0):
        return iter(self.batches)


def random_batches(seed: int, n: int = 3, size: int = 8) -> ListBatches:
    g = torch.Generator().manual_seed(seed)
    return ListBatches((torch.randn(size, 4, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
                       for _ in range(n))


def ctx(task, model, replay=(), seed=0):
    return TaskContext(task=task, model=model, device=CPU, replay=list(replay),
                       class_weights=torch.tensor([1.0, 0.5, 0.8]),
                       settings={"seed": seed, "act_range": 2.0, "act_bits": 4})


def train_task(method, model, task, data, replay=()):
    """One task as lq/steps/lifelong.py runs it: before_task, fit (1 epoch), after_task."""
    history = []
    c = ctx(task, model, replay)
    method.before_task(c)
    fit(model, data, SCHEDULE, [method], task=task, seed=0, history=history)
    method.after_task(c)
    return history


def perturb(model, amount=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


def same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


# --- every method --------------------------------------------------------------------------------

def test_schema_enum_is_the_registry():
    schema = lqconfig.load_schema()
    enum = schema["$defs"]["method"]["enum"]
    assert sorted(enum) == list_methods()
    assert {"lifequant", "finetune", "ewc", "mas", "si", "rwalk", "scp", "joint"} <= set(list_methods())


def _block_schema(schema, name):
    block = schema["properties"]["lifelong"]["properties"]["methods"]["properties"][name]
    return schema["$defs"][block["$ref"].rsplit("/", 1)[1]] if "$ref" in block else block


@pytest.mark.parametrize("name", list_methods())
def test_each_method_block_in_the_schema_lists_exactly_its_constructor_settings(name):
    schema = lqconfig.load_schema()
    block = _block_schema(schema, name)
    assert sorted(block.get("properties", {})) == sorted(method_settings(name))
    assert sorted(block.get("required", [])) == sorted(method_settings(name))
    assert block["additionalProperties"] is False
    assert sorted(schema["properties"]["lifelong"]["properties"]["methods"]["required"]) == list_methods()


def test_a_misspelt_or_missing_setting_is_an_error_naming_it():
    with pytest.raises(LqError, match=r"lifelong.methods.ewc: unknown setting\(s\) lambda; missing setting\(s\) ll_lambda"):
        create_method("ewc", {"lambda": 1.0, "balanced": True, "ball_form": "additive"})
    with pytest.raises(LqError, match=r"lifelong.methods.finetune: unknown setting\(s\) ll_lambda"):
        create_method("finetune", {"ll_lambda": 1.0})


def test_a_penalty_method_without_lambda_in_params_is_refused_before_any_work():
    raw = lqconfig.read_yaml(lqconfig.REPO_ROOT / "params.yaml")
    del raw["lifelong"]["methods"]["ewc"]["ll_lambda"]
    with pytest.raises(LqError, match=r"lifelong.methods.ewc: 'll_lambda' is a required property"):
        lqconfig.resolve(raw)


@pytest.mark.parametrize("key,value,words", [
    ("lifelong.methods.si.epsilon", 0, "> 0"), ("lifelong.methods.rwalk.alpha", 1.5, "(0, 1]"),
    ("lifelong.methods.rwalk.alpha", 0, "(0, 1]"), ("lifelong.methods.scp.projections", 0, ">= 1"),
    ("lifelong.methods.scp.projections", 2.5, "integer"), ("lifelong.method", "lwf", "lifelong method"),
    ("lifelong.methods.ewc.lambda", 1.0, "unknown key"),
    ("lifelong.methods.finetune.ll_lambda", 1.0, "allowed here: nothing"),
])
def test_method_settings_are_validated_by_the_schema(key, value, words):
    raw = lqconfig.read_yaml(lqconfig.REPO_ROOT / "params.yaml")
    lqconfig.resolve(raw)  # the committed values are valid
    lqconfig.set_key(raw, key, value)
    with pytest.raises(LqError) as info:
        lqconfig.resolve(raw)
    assert key in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("name", list_methods())
def test_penalty_is_zero_at_the_anchor_and_positive_away_from_it(name):
    model, method = TinyNet(), make(name)
    replay0 = random_batches(1, n=2)
    train_task(method, model, 0, random_batches(0), [])
    method.before_task(ctx(1, model, [replay0]))
    at_anchor = method.penalty(model)
    perturb(model)
    away = method.penalty(model)
    if name in NO_PENALTY:
        assert at_anchor is None and away is None
        return
    assert at_anchor is not None and at_anchor.item() == 0.0
    assert away is not None and away.item() > 0
    assert away.requires_grad  # it pulls the parameters back


@pytest.mark.parametrize("name", list_methods())
def test_pool_is_union_of_seen_training_for_joint_and_train_plus_replay_otherwise(name):
    table = lambda *ids: pd.DataFrame({"image": list(ids), "label": [0] * len(ids)})  # noqa: E731
    train = table("a", "b")
    earlier_train, earlier_replay = [table("c", "d", "a"), table("e", "f")], [table("c"), table("e")]
    method = make(name)
    for replay_in_pool in (True, False):
        pool = method.pool(train, earlier_replay, earlier_train, replay_in_pool)
        assert pool["image"].is_unique
        if name == "joint":
            expected = {"a", "b", "c", "d", "e", "f"}
        else:
            expected = {"a", "b", "c", "e"} if replay_in_pool else {"a", "b"}
        assert set(pool["image"]) == expected


@pytest.mark.parametrize("name", list_methods())
def test_state_round_trips_through_a_weights_only_checkpoint(name):
    """Saved mid-task and loaded as `fit` resumes (after before_task), a method goes on identically."""
    replay = [random_batches(1, n=2), random_batches(2, n=2)]
    model, method = TinyNet(), make(name)
    train_task(method, model, 0, random_batches(0), [])
    method.before_task(ctx(1, model, replay[:1]))
    fit(model, random_batches(3), SCHEDULE, [method], task=1, seed=0)
    buffer = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_model, resumed = TinyNet(seed=1), make(name)
    resumed_model.load_state_dict(saved["model"])
    resumed.before_task(ctx(1, resumed_model, replay[:1]))
    resumed.load_state_dict(saved["method"])
    assert same(resumed.state_dict(), method.state_dict())
    for m, net in ((method, model), (resumed, resumed_model)):  # the rest of task 1, then task 2 starts
        fit(net, random_batches(4), SCHEDULE, [m], task=1, seed=0)
        m.after_task(ctx(1, net, replay[:1]))
        m.before_task(ctx(2, net, replay))
    assert same(resumed.state_dict(), method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    perturb(model)
    perturb(resumed_model)
    a, b = method.penalty(model), resumed.penalty(resumed_model)
    assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("name", list_methods())
def test_two_tasks_of_training_run_with_finite_loss(name):
    model, method = TinyNet(), make(name)
    rows = []
    replay = [random_batches(10, n=1), random_batches(11, n=1)]
    for t in range(2):
        rows += train_task(method, model, t, random_batches(t, n=4), replay[:t])
    assert [r["task"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- SI and RWalk: path integrals, by hand ------------------------------------------------------

class Params(nn.Module):
    """A model that is only its parameters; tests set .grad and take steps by hand."""

    def __init__(self, *values):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float64))


def step(method, model, grad, new):
    """One loop step with a known gradient and a known update."""
    model.w.grad = torch.tensor(grad, dtype=torch.float64)
    method.after_backward(model)
    with torch.no_grad():
        model.w.copy_(torch.tensor(new, dtype=torch.float64))
    method.after_step(model)


def test_si_accumulates_the_path_integral_over_steps():
    # ξ = 0.0625 so the numbers stay exact; c = λ = 1.
    model = Params(1.0)
    si = make("si", epsilon=0.0625)
    si.before_task(ctx(0, model))
    step(si, model, [2.0], [0.5])    # ω = −g·Δθ = −2 · (0.5 − 1)    = 1
    assert si.omega["w"].item() == 1.0
    step(si, model, [1.0], [0.25])   # ω += −1 · (0.25 − 0.5) = 0.25 → 1.25
    assert si.omega["w"].item() == 1.25
    si.after_task(ctx(0, model))
    # Δ_task = 0.25 − 1 = −0.75, Δ² = 0.5625; Ω = 1.25 / (0.5625 + 0.0625) = 1.25 / 0.625 = 2
    assert si.importance["w"].item() == 2.0
    assert si.omega["w"].item() == 0.0

    si.before_task(ctx(1, model))    # anchor θ* = 0.25
    with torch.no_grad():
        model.w.fill_(0.75)
    assert si.penalty(model).item() == 0.5  # c Ω (θ − θ*)² = 1 · 2 · 0.25
    # .grad of loss + penalty = g_task + 2cΩ(θ − θ*) = 1 + 2·1·2·0.5 = 3; ω must use g_task = 1:
    step(si, model, [3.0], [0.5])    # ω = −1 · (0.5 − 0.75) = 0.25 (with the full .grad: 0.75)
    assert si.omega["w"].item() == 0.25


def test_si_clamps_the_accumulated_importance_at_zero():
    model = Params(1.0, 1.0)
    si = make("si", epsilon=0.0625)
    si.before_task(ctx(0, model))
    step(si, model, [2.0, 2.0], [0.5, 1.5])  # ω = [−2·(−0.5), −2·0.5] = [1, −1]
    si.after_task(ctx(0, model))
    # Ω = max([1, −1] / (0.25 + 0.0625), 0) = max([3.2, −3.2], 0) = [3.2, 0]
    assert si.importance["w"].tolist() == pytest.approx([3.2, 0.0])
    si.before_task(ctx(1, model))            # anchor [0.5, 1.5]: no penalty gradient at the first step
    step(si, model, [1.0, 0.0], [1.0, 1.5])  # a step up the loss: ω = [−1·0.5, 0] = [−0.5, 0]
    si.after_task(ctx(1, model))
    # Ω = max(3.2 + (−0.5) / (0.25 + 0.0625), 0) = 3.2 − 1.6 = 1.6: a later task can lower Ω
    assert si.importance["w"].tolist() == pytest.approx([1.6, 0.0])


def test_rwalk_accumulates_fisher_and_score_over_steps_and_averages_tasks():
    # α = 0.5 (weight of the newest batch), ε = 0.5, λ = 1: round numbers.
    model = Params(1.0, 1.0)
    rw = make("rwalk", alpha=0.5, epsilon=0.5)
    rw.before_task(ctx(0, model))
    # step 1: g = [2, 1] → F = g² = [4, 1] (first step); Δθ = [−0.5, −0.5]
    #   s = −gΔθ / (½FΔθ² + ε) = [1 / (0.5·4·0.25 + 0.5), 0.5 / (0.5·1·0.25 + 0.5)]
    #     = [1/1, 0.5/0.625] = [1, 0.8]
    step(rw, model, [2.0, 1.0], [0.5, 0.5])
    assert rw.fisher["w"].tolist() == pytest.approx([4.0, 1.0])
    assert rw.score["w"].tolist() == pytest.approx([1.0, 0.8])
    # step 2: g = [1, 1] → F = 0.5·[1, 1] + 0.5·[4, 1] = [2.5, 1]; Δθ = [−1, +1] (the 2nd raises the loss)
    #   s += [1 / (0.5·2.5·1 + 0.5), −1 / (0.5·1·1 + 0.5)] = [1/1.75, −1] = [4/7, −1] → s = [11/7, −0.2]
    step(rw, model, [1.0, 1.0], [-0.5, 1.5])
    assert rw.fisher["w"].tolist() == pytest.approx([2.5, 1.0])
    assert rw.score["w"].tolist() == pytest.approx([11 / 7, -0.2])
    rw.after_task(ctx(0, model))
    # s̄ = max(s, 0) = [11/7, 0]; importance = F/max F + s̄/max s̄ = [1, 0.4] + [1, 0] = [2, 0.4]
    assert rw.past_score["w"].tolist() == pytest.approx([11 / 7, 0.0])
    assert rw.importance["w"].tolist() == pytest.approx([2.0, 0.4])

    rw.before_task(ctx(1, model))  # anchor θ* = [−0.5, 1.5]; the penalty's gradient is 0 there
    # g = [1, 2] → F = 0.5·[1, 4] + 0.5·[2.5, 1] = [1.75, 2.5]; Δθ = [−1, −0.5]
    #   s = [1 / (0.5·1.75·1 + 0.5), 1 / (0.5·2.5·0.25 + 0.5)] = [1/1.375, 1/0.8125] = [8/11, 16/13]
    step(rw, model, [1.0, 2.0], [-1.5, 1.0])
    assert rw.score["w"].tolist() == pytest.approx([8 / 11, 16 / 13])
    rw.after_task(ctx(1, model))
    # s̄ = ½([11/7, 0] + [8/11, 16/13]) = [177/154, 8/13]
    # importance = [1.75, 2.5]/2.5 + s̄ / (177/154) = [0.7 + 1, 1 + (8/13)·(154/177)]
    assert rw.past_score["w"].tolist() == pytest.approx([177 / 154, 8 / 13])
    assert rw.importance["w"].tolist() == pytest.approx([1.7, 1 + (8 / 13) * (154 / 177)])


# --- EWC, MAS, SCP: importance from replay data -------------------------------------------------

def linear(weight, bias):
    model = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight))
        model.bias.copy_(torch.tensor(bias))
    return model


def test_ewc_importance_is_the_squared_cross_entropy_gradient_summed_over_tasks():
    # Zero weights → softmax = [0.5, 0.5]; ∂CE/∂W = (p − onehot(y)) xᵀ, ∂CE/∂b = p − onehot(y).
    model = linear([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    replay0 = ListBatches([(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))])  # p − e = [−0.5, 0.5]
    replay1 = ListBatches([(torch.tensor([[2.0, 0.0]]), torch.tensor([1]))])  # p − e = [0.5, −0.5]
    # balanced with uneven weights: EWC's Fisher must still be of plain cross-entropy
    ewc = make("ewc")
    c = TaskContext(task=1, model=model, device=CPU, replay=[replay0], class_weights=torch.tensor([1.0, 0.1]))
    ewc.before_task(c)
    # task 0: ∂W = [[−0.5, −1], [0.5, 1]] → squared [[0.25, 1], [0.25, 1]]; ∂b² = [0.25, 0.25]
    assert ewc.importance["weight"].tolist() == [[0.25, 1.0], [0.25, 1.0]]
    assert ewc.importance["bias"].tolist() == [0.25, 0.25]
    c2 = TaskContext(task=2, model=model, device=CPU, replay=[replay0, replay1],
                     class_weights=torch.tensor([1.0, 0.1]))
    ewc.before_task(c2)
    # + task 1 only: ∂W = [[1, 0], [−1, 0]] → squared [[1, 0], [1, 0]]; ∂b² = [0.25, 0.25]
    assert ewc.importance["weight"].tolist() == [[1.25, 1.0], [1.25, 1.0]]
    assert ewc.importance["bias"].tolist() == [0.5, 0.5]
    ewc.before_task(c2)  # the same task again folds nothing new
    assert ewc.importance["bias"].tolist() == [0.5, 0.5]


def test_ewc_averages_squared_batch_gradients():
    model = linear([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    replay0 = ListBatches([(torch.tensor([[1.0, 2.0]]), torch.tensor([0])),
                           (torch.tensor([[2.0, 0.0]]), torch.tensor([1]))])
    ewc = make("ewc")
    ewc.before_task(ctx(1, model, [replay0]))
    # mean of the two squared batch gradients above: W [[0.625, 0.5], [0.625, 0.5]], b [0.25, 0.25]
    assert ewc.importance["weight"].tolist() == [[0.625, 0.5], [0.625, 0.5]]
    assert ewc.importance["bias"].tolist() == [0.25, 0.25]


def test_mas_importance_is_the_mean_absolute_gradient_per_input():
    # f(x) = Wx + b with W = [[1, 0]], b = 0; ∂‖f‖²/∂W = 2 f xᵀ, ∂‖f‖²/∂b = 2 f.
    # x1 = [1, 0]: f = 1  → ∂W = [2, 0], ∂b = 2;  x2 = [−1, 0]: f = −1 → ∂W = [2, 0], ∂b = −2.
    # mean of |·| per input: W [[2, 0]], b [2] (|mean| over the batch would give b = 0).
    model = linear([[1.0, 0.0]], [0.0])
    replay = ListBatches([(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 0]))])
    mas = make("mas")
    mas.before_task(ctx(1, model, [replay]))
    assert mas.importance["weight"].tolist() == [[2.0, 0.0]]
    assert mas.importance["bias"].tolist() == [2.0]


def test_mas_uses_no_labels():
    model = TinyNet()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    results = []
    for labels in (torch.zeros(6, dtype=torch.int64), torch.tensor([2, 1, 0, 2, 1, 0])):
        mas = make("mas")
        mas.before_task(ctx(1, model, [ListBatches([(x, labels)])]))
        results.append(mas.importance)
    assert same(results[0], results[1])
    assert any(v.abs().sum() > 0 for v in results[0].values())


def _scp(seed, model, replay):
    scp = make("scp", projections=7)
    scp.before_task(ctx(1, model, [replay], seed=seed))
    return scp.importance


def test_scp_importance_is_reproducible_for_a_seed_and_differs_for_another():
    model, replay = TinyNet(), random_batches(4, n=2)
    a, b, other = _scp(0, model, replay), _scp(0, model, replay), _scp(1, model, replay)
    assert same(a, b)
    assert not same(a, other)
    assert all((v >= 0).all() for v in a.values())


@pytest.mark.parametrize("projections", [2, 7], ids=["L<C", "L>C"])
def test_scp_batched_products_equal_the_definition(projections):
    """Γ = mean_l (∂(ξ_lᵀ μ)/∂θ)², μ the mean output over *all* inputs, one backward per ξ_l."""
    model, replay = TinyNet(), random_batches(5, n=3, size=4)
    xi = unit_projections(projections, CLASSES, torch.Generator().manual_seed(0))
    assert torch.allclose(xi.norm(dim=1), torch.ones(projections))
    fast = sliced_importance(model, replay.epoch(), xi, chunk=3)
    loop = sliced_importance(model, replay.epoch(), xi, batched=False)
    model.eval()
    params = dict(model.named_parameters())
    mu = torch.cat([model(x) for x, _ in replay.epoch()]).mean(0)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(projections):
        grads = torch.autograd.grad(xi[k] @ mu, list(params.values()), retain_graph=True)
        for n, g in zip(params, grads):
            expected[n] += g.pow(2) / projections
    for n in params:
        assert torch.allclose(fast[n], expected[n], rtol=1e-4, atol=1e-9), n
        assert torch.allclose(loop[n], expected[n], rtol=1e-4, atol=1e-9), n
