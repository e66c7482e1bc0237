"""`train.compile: true` (torch.compile) gives the same results as eager mode, within tolerance.

Compiled kernels fuse and reorder float operations, so results differ in the last bits. In
full precision that stays at float noise through training (TOL). On a 4-bit network one such
difference can move a value to the neighbouring grid level, which changes that step's gradient
and then compounds over steps, so there the test compares what is deterministic: the quantized
forward pass and the first training step's loss.
"""

from __future__ import annotations

import pytest
import torch

from lq.methods import create_method
from lq.models import create_model
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
from lq.train.engine import fit
from lq.train.settings import Schedule
from tests.conftest import TEST_SCALE

TOL = 1e-3
pytestmark = pytest.mark.integration


class TinyBatches:
    """The `Batches` interface over fixed random data."""

    def __init__(self, n: int = 64, batch: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.batch = batch

    def __len__(self):
        return len(self.x) // self.batch

    def epoch(self, seed):
        for i in range(0, len(self.x), self.batch):
            yield self.x[i : i + self.batch], self.y[i : i + self.batch]


def model(bits: int) -> torch.nn.Module:
    # The test projects' model (ResNet-8): compiling is what costs here, and it grows with the graph.
    torch.manual_seed(0)
    net = create_model(TEST_SCALE["model.arch"], num_classes=4, in_channels=1, image_size=8)
    return quantize_model(net, QuantConfig(weight_bits=bits, act_bits=bits)) if bits < 32 else net


def train(backend: str | None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Two epochs of FP32 training, eager (backend None) or compiled with that torch.compile backend."""
    net = model(32)
    history: list[dict] = []
    fit(net, TinyBatches(), Schedule(epochs=2, lr=0.05, milestones=(), gamma=0.1, momentum=0.9, weight_decay=0.0),
        [create_method("finetune")], history=history,
        forward=torch.compile(net, backend=backend) if backend else net)
    return history, {k: v.detach().clone() for k, v in net.state_dict().items()}


# `aot_eager` captures the graph (Dynamo) and derives its backward (AOTAutograd) as the default
# backend does, then runs it with eager kernels: seconds. Inductor, what `train.compile` uses,
# also generates and compiles C++ kernels: about 45 s of CPU with a cold cache, so the slow suite.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_fp32_training_matches_eager(backend):
    eager_hist, eager_state = train(None)
    comp_hist, comp_state = train(backend)
    assert [r["loss"] for r in comp_hist] == pytest.approx([r["loss"] for r in eager_hist], rel=TOL)
    for name, tensor in eager_state.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, comp_state[name], atol=TOL, rtol=TOL), name
    # training moved the weights far more than the tolerance, so the comparison means something
    assert (model(32).state_dict()["head.weight"] - eager_state["head.weight"]).abs().max() > 10 * TOL


@pytest.mark.slow  # compiling the quantized graph takes ~40 s of CPU; FP32 training stays in the default suite
def test_compiled_w4a4_forward_and_first_step_match_eager():
    batches = TinyBatches()
    x, y = next(batches.epoch(0))
    eager, compiled_net = model(4), model(4)
    compiled = torch.compile(compiled_net)
    eager.eval(), compiled_net.eval()
    out = eager(x)
    assert torch.allclose(compiled(x), out, atol=TOL * out.abs().max().item())
    eager.train(), compiled_net.train()
    loss_eager = torch.nn.functional.cross_entropy(eager(x), y)
    loss_compiled = torch.nn.functional.cross_entropy(compiled(x), y)
    assert loss_compiled.item() == pytest.approx(loss_eager.item(), rel=TOL)
    loss_eager.backward(), loss_compiled.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_net.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=TOL * a.grad.abs().max().item() + 1e-8), name


DETERMINISM_CHILD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from tests.integration.test_compile import TinyBatches, model
from lq.methods import create_method
from lq.train.compiled import FullBatchCompile
from lq.train.engine import fit
from lq.train.settings import Schedule
net = model(4)
fit(net, TinyBatches(), Schedule(epochs=2, lr=0.05, milestones=(), gamma=0.1, momentum=0.9, weight_decay=0.0),
    [create_method("finetune")], history=[], forward=FullBatchCompile(net, net))
torch.save(net.state_dict(), sys.argv[2])
"""


@pytest.mark.slow  # two Inductor compilations of the w4a4 graph (the second from the shared cache)
def test_compiled_w4a4_training_is_the_same_run_to_run(tmp_path):
    """Same seed, same compiled CPU run: bit-identical weights, in two processes that share one
    Inductor cache (the first compiles, the second loads), as two jobs of a workspace do."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    states = []
    for run in ("first", "second"):
        out = tmp_path / f"{run}.pt"
        subprocess.run([sys.executable, "-c", DETERMINISM_CHILD, str(REPO), str(out)], env=env, check=True,
                       timeout=900)
        states.append(torch.load(out, weights_only=True))
    assert states[0].keys() == states[1].keys()
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
    assert not torch.equal(states[0]["head.weight"], model(4).state_dict()["head.weight"])  # it trained
