"""The PTQ sweep (lq.quant.ptq, lq.ptq) on the digits store with small untrained ResNets.

w32a32 is the float model exactly; the sweep leaves the weights as they were; calibration reads
training images only (a store whose test images are replaced by noise calibrates to the same
ranges); a QAT model's float view is what its quantizers round.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lq import metrics, ptq, stream
from lq.data.sources import load_digits_store
from lq.data.store import ImageStore, write_store
from lq.errors import LqError
from lq.quant import functions
from lq.quant import ptq as qptq
from lq.quant.config import QuantConfig
from lq.quant.modules import QConv2d
from lq.train import checkpoint, spec
from lq.train.data import Batches, load_bank

MODEL = spec.ModelSpec("resnet8", num_classes=10, in_channels=1, image_size=(8, 8))
SETTINGS = ptq.Settings(weight_bits=(2, 4, 32), act_bits=(4, 32), calibration_images=200, batch_size=64, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(quant: QuantConfig | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = spec.build(MODEL, quant, torch.device("cpu"))
    with torch.no_grad():  # BN statistics away from identity, so the float view must keep them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _save(path: Path, model: torch.nn.Module, quant: QuantConfig | None, stage: str, **extra) -> Path:
    checkpoint.save(path, {"config": spec.checkpoint_config(MODEL, quant, stage=stage, **extra),
                           "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A digits store, a 3-task split with replay, an FP32 checkpoint and a w4a4 lifelong cell."""
    root = tmp_path_factory.mktemp("ptq")
    digits = load_digits_store(seed=123, test_fraction=0.2)
    write_store(digits, root / "store")
    # The same store with every test image replaced by noise: what calibration sees must not change.
    noisy = digits.images.copy()
    test = np.char.startswith(digits.ids.astype(str), "test/")
    noisy[test] = np.random.default_rng(1).integers(0, 256, size=noisy[test].shape, dtype=noisy.dtype)
    write_store(ImageStore(noisy, digits.labels, digits.ids, digits.classes, digits.source), root / "noisy")
    stream.write_split(root / "store", root / "split", num_tasks=3, diminish_rate=0.5, seed=123)
    stream.write_replay(root / "split", root / "replay", replay_rate=0.2, seed=123)
    _save(root / "pretrain.pt", _model(None, 0), None, "pretrain")
    quant = QuantConfig(4, 4, "proxq", "uniform", 2.0)
    (root / "cell").mkdir()
    for t in range(3):
        _save(root / "cell" / f"task{t}.pt", _model(quant, 10 + t), quant, "lifelong", method="finetune")
    return root


def _batches(root: Path, n: int = 128):
    bank = load_bank(root / "store", torch.device("cpu"))
    return Batches(bank, torch.arange(n), 64, shuffle=False)


# --- the modules -------------------------------------------------------------------------------------

def test_w32a32_gives_the_float_models_logits_exactly(project):
    model = _model(None, 0)
    batches = _batches(project)
    prepared = qptq.prepare(qptq.float_view(model))
    qptq.calibrate(prepared, batches)
    qptq.set_bits(prepared, 8, 8)  # quantize once, then back to float
    qptq.set_bits(prepared, 32, 32)
    with torch.no_grad():
        for x, _ in batches:
            assert torch.equal(prepared(x), model(x))
        qptq.set_bits(prepared, 4, 4)
        assert not torch.equal(prepared(x), model(x))  # the comparison can fail


def test_w32a32_of_a_qat_model_is_its_float_view_and_rounding_that_view_gives_the_qat_weights(project):
    quant = QuantConfig(4, 4, "proxq", "uniform", 2.0)
    model = _model(quant, 1)
    view = qptq.float_view(model)
    x, _ = next(iter(_batches(project)))
    prepared = qptq.prepare(copy.deepcopy(view))
    qptq.calibrate(prepared, [(x, None)])
    with torch.no_grad():
        assert torch.equal(prepared(x), view(x))
    qconvs = [m for m in model.modules() if isinstance(m, QConv2d)]
    convs = [m for m in view.modules() if type(m) is torch.nn.Conv2d]
    assert len(qconvs) == len(convs) > 0
    for q, c in zip(qconvs, convs):
        # ProxQ's grid applied to the continuous weight is the trained layer's weight.
        regridded = 2 * functions.quantize_unsigned((c.weight + 1) / 2, 4) - 1
        assert torch.allclose(regridded, q.quantized_weight(), atol=1e-6)
        assert c.weight.abs().max() <= 1
    # activations keep the quantizer's clip [0, 1]
    assert sum(isinstance(m, qptq.Clamp) for m in view.modules()) == sum(
        type(m).__name__ == "ActQuantizer" for m in model.modules())


@pytest.mark.parametrize("name", ["dorefa", "lsq", "pow2", "proxq_cdf"])
def test_every_qat_weight_quantizer_has_a_float_view(name, project):
    quant = QuantConfig(4, 4, name, "lsq" if name == "lsq" else "uniform", 2.0)
    model = _model(quant, 2)
    x, _ = next(iter(_batches(project)))
    with torch.no_grad():
        model(x)  # LSQ steps and pow2 exponents are fixed on the first batch
    view = qptq.float_view(model)
    for q, c in zip([m for m in model.modules() if isinstance(m, QConv2d)],
                    [m for m in view.modules() if type(m) is torch.nn.Conv2d]):
        # Rounding the continuous weight moves it by at most half of the layer's largest grid step.
        gap = (c.weight - q.quantized_weight()).abs().max()
        levels = q.quantized_weight().unique()
        assert gap <= (levels.diff().max() / 2 + 1e-6 if len(levels) > 1 else 1e-6)


def test_weights_digest_sees_any_change():
    model = _model(None, 0)
    before = qptq.weights_digest(model)
    assert qptq.weights_digest(copy.deepcopy(model)) == before
    with torch.no_grad():
        model.stem.conv.weight[0, 0, 0, 0] += 1e-7
    assert qptq.weights_digest(model) != before


def test_the_sweep_leaves_the_models_weights_unchanged(project):
    model = _model(QuantConfig(4, 4, "proxq", "uniform", 2.0), 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = qptq.weights_digest(model)
    swept = ptq.sweep_model(model, _batches(project), [_batches(project)], SETTINGS)
    assert swept.digest == before == qptq.weights_digest(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert set(swept.accuracy) == set(SETTINGS.pairs())


def test_uncalibrated_activations_and_unknown_quantizers_are_refused():
    prepared = qptq.prepare(qptq.float_view(_model(None, 0)))
    with pytest.raises(LqError, match="calibrate"):
        qptq.set_bits(prepared, 4, 4)
    qptq.set_bits(prepared, 4, 32)  # weights need no calibration
    with pytest.raises(LqError, match="unknown post-training quantizer"):
        qptq.prepare(qptq.float_view(_model(None, 0)), weight_quantizer="lsq")


# --- the stage's library -------------------------------------------------------------------------------

def test_pretrain_sweep_w32a32_is_the_fp32_accuracy_and_the_checkpoint_is_untouched(project):
    path = project / "pretrain.pt"
    file_before = path.read_bytes()
    summary = ptq.sweep_pretrain(path, store=project / "store", split=project / "split", settings=SETTINGS)
    assert path.read_bytes() == file_before
    model, _ = spec.load(path, torch.device("cpu"))
    assert summary["weights_sha256"] == qptq.weights_digest(model)
    assert summary["float_accuracy"] == summary["accuracy"]["w32a32"] == summary["native_accuracy"]
    assert set(summary["accuracy"]) == {"w2a4", "w2a32", "w4a4", "w4a32", "w32a4", "w32a32"}
    assert summary["calibration"]["from"] == ["train0.csv"]


def test_calibration_never_reads_test_images(project):
    """Noise in place of every test image leaves the calibrated ranges as they were; calibrating
    on those test images would not (so the test fails if calibration reads them)."""
    clean = ptq.sweep_pretrain(project / "pretrain.pt", store=project / "store", split=project / "split",
                               settings=SETTINGS)
    noisy = ptq.sweep_pretrain(project / "pretrain.pt", store=project / "noisy", split=project / "split",
                               settings=SETTINGS)
    assert noisy["activation_ranges"] == clean["activation_ranges"]
    # The test can fail: calibrating on test rows of the noisy store gives other ranges.
    bank = load_bank(project / "noisy", torch.device("cpu"))
    test_rows = torch.tensor([r for i, r in bank.row_of.items() if i.startswith("test/")])
    model, _ = spec.load(project / "pretrain.pt", torch.device("cpu"))
    prepared = qptq.prepare(qptq.float_view(model))
    ranges = qptq.calibrate(prepared, Batches(bank, test_rows, 64, shuffle=False))
    assert {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in ranges.items()} != clean["activation_ranges"]


def test_calibration_rows_refuse_a_table_with_test_images(project):
    import pandas as pd

    bank = load_bank(project / "store", torch.device("cpu"))
    test = pd.read_csv(project / "split" / "test0.csv")
    with pytest.raises(LqError, match="training images only"):
        ptq.calibration_rows(bank, test, 10, (0, 0))
    train = pd.read_csv(project / "split" / "train0.csv")
    rows = ptq.calibration_rows(bank, train, 10, (0, 0))
    assert len(rows) == 10 and torch.equal(rows, ptq.calibration_rows(bank, train, 10, (0, 0)))


def test_lifelong_sweep_gives_the_matrix_final_row_and_forgetting_per_pair(project, tmp_path):
    settings = ptq.Settings(weight_bits=(2, 32), act_bits=(4, 32), calibration_images=100, batch_size=128)
    summary = ptq.sweep_lifelong(project / "cell", store=project / "store", split=project / "split",
                                 replay=project / "replay", settings=settings)
    assert summary["method"] == "finetune" and summary["trained_bits"] == "w4a4" and summary["num_tasks"] == 3
    assert set(summary["pairs"]) == {ptq.pair_name(w, a) for w, a in settings.pairs()}
    for cell in summary["pairs"].values():
        R = np.array(cell["accuracy_matrix"])
        assert cell["final_row"] == R[-1].tolist()
        assert cell["average_accuracy"] == round(metrics.average_accuracy(R), 6)
        assert cell["forgetting"] == round(metrics.forgetting(R).mean, 6)
    assert summary["float"]["accuracy_matrix"] == summary["pairs"]["w32a32"]["accuracy_matrix"]
    noisy = ptq.sweep_lifelong(project / "cell", store=project / "noisy", split=project / "split",
                               replay=project / "replay", settings=settings)
    assert noisy["activation_ranges"] == summary["activation_ranges"]
    ptq.write_outputs(summary, grid=tmp_path / "g.json", table=tmp_path / "g.csv", heatmap=tmp_path / "g.png")
    table = np.genfromtxt(tmp_path / "g.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert len(table) == len(settings.pairs()) and "forgetting" in table.dtype.names
    assert (tmp_path / "g.png").stat().st_size > 0


def test_the_activation_fast_path_is_minmax_act_bit_for_bit():
    act = qptq.PtqActivation(qptq.ActQuantPoint(), "minmax")
    x = torch.randn(4, 8, 5, 5) * 3
    act.observing = True
    act(x[:2])
    act.observing = False
    for bits in (2, 4, 8):
        act.set_bits(bits)
        expected = functions.minmax_act(x, act.low, act.high, bits)
        with torch.no_grad():
            assert torch.equal(act(x), expected)
        assert torch.equal(act(x), expected)  # the straight-through path, with gradients on
