"""Self-supervised pretraining (SPEC 11): SSQL's quantizers and loss on hand-made tensors, the bit
draws, resume, the collapse guard, the views, and the linear evaluation's data discipline."""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lq import config as lqconfig
from lq import ptq as sweep
from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.errors import LqError
from lq.models import create_model
from lq.pipeline import REPO_ROOT, load_table, stage_by_name
from lq.quant.points import ActQuantPoint
from lq.ssl import linear, loss
from lq.ssl import model as ssl_model
from lq.ssl.plugin import BitDraws, SslObjective
from lq.ssl.settings import LinearSettings, SslConfig, SslSettings, ViewSettings
from lq.ssl.views import Views
from lq.train import ssl
from lq.train.data import load_bank
from lq.train.plugin import Plugin, TaskContext
from lq.train.settings import Runtime, Schedule


# --- SPEC 11's hand cases through SSQL's quantized pass ----------------------------------------------

def test_the_quantized_pass_puts_weights_on_the_b4_grid_of_the_hand_case():
    conv = torch.nn.Conv2d(5, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([7.5, -7.5, 3.5, 2.5, -0.5]).reshape(1, 5, 1, 1))
    switch = ssl_model.SwitchConv2d(conv)
    x = torch.eye(5).reshape(5, 5, 1, 1)  # image i reads weight i alone
    assert torch.equal(switch(x).flatten(), torch.tensor([7.5, -7.5, 3.5, 2.5, -0.5]))  # 32 bits: float
    switch.bits = 4  # s = 7.5 / 7.5 = 1: q = round-half-even, clamped to [-8, 7]
    assert torch.equal(switch(x).flatten(), torch.tensor([7.0, -8.0, 4.0, 2.0, 0.0]))
    switch(x).sum().backward()  # straight-through inside the grid, none where 7.5 (-> 8) is clamped to 7
    assert torch.equal(conv.weight.grad.flatten()[2:], torch.ones(3)) and conv.weight.grad.flatten()[0] == 0


def test_the_quantized_pass_puts_activations_on_the_b2_grid_of_the_hand_case():
    act = ssl_model.SwitchAct(ActQuantPoint())
    act.observing = True
    act(torch.tensor([0.0, 0.5, 1.5, 3.0]))  # the float pass records min 0, max 3
    act.observing, act.bits = False, 2  # s = 1, zp = 0
    assert torch.equal(act(torch.tensor([0.0, 0.5, 1.5, 3.0])), torch.tensor([0.0, 0.0, 2.0, 3.0]))


def test_the_loss_hand_case_fp_term():
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    p2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    assert loss.simsiam(p1, p2, z1, z2).item() == pytest.approx(-0.853553, abs=1e-6)
    # the quantized term alone shifts the SSQL loss by half its difference from the float term
    p1_q = torch.tensor([[0.0, 1.0]])  # cos(p1_q, z2) = 0 instead of 1
    assert loss.ssql(p1, p2, p1_q, p2, z1, z2).item() == pytest.approx(0.5 * -0.853553 + 0.5 * -0.353553, abs=1e-6)


def test_identical_branches_give_the_fp_loss():
    torch.manual_seed(0)
    p1, p2, z1, z2 = torch.randn(4, 8, 16).unbind(0)
    assert torch.equal(loss.ssql(p1, p2, p1, p2, z1, z2), loss.simsiam(p1, p2, z1, z2))
    # and a switchable network at 32 bits computes exactly the float network's (z, p)
    model = siamese()
    x = torch.randn(6, 1, 8, 8)
    reference = copy.deepcopy(model).eval()
    ssl_model.make_switchable(model)
    model.eval()
    ssl_model.observe(model)
    z, p = model(x)
    ssl_model.to_float(model)
    z_again, p_again = model(x)
    assert torch.equal(z, reference(x)[0]) and torch.equal(p, reference(x)[1])
    assert torch.equal(z_again, z) and torch.equal(p_again, p)


def test_the_targets_get_no_gradient_and_both_branches_reach_the_weights():
    p1, p2, z1, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))
    loss.ssql(p1, p2, p1 * 2, p2 * 3, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0

    def grads(term: str) -> torch.Tensor:
        torch.manual_seed(1)
        model = ssl_model.make_switchable(siamese())
        x1, x2 = torch.randn(2, 8, 1, 8, 8).unbind(0)
        ssl_model.observe(model)
        (z1, p1), (z2, p2) = model(x1), model(x2)
        ssl_model.quantize(model, 3, 4)
        (_, p1_q), (_, p2_q) = model(x1), model(x2)
        ssl_model.to_float(model)
        objective = loss.simsiam(p1, p2, z1, z2) if term == "float" else loss.simsiam(p1_q, p2_q, z1, z2)
        objective.backward()
        return model.backbone.layer1[0].conv1.weight.grad.clone()

    float_grad, quantized_grad = grads("float"), grads("quantized")
    assert float_grad.abs().sum() > 0 and quantized_grad.abs().sum() > 0  # STE through the quantized pass
    assert not torch.allclose(float_grad, quantized_grad)


def test_the_stem_and_projector_keep_their_bits_and_the_predictor_stays_float():
    model = ssl_model.make_switchable(siamese(), stem_bits=8)
    ssl_model.observe(model)
    model(torch.randn(4, 1, 8, 8))
    ssl_model.quantize(model, 2, 4)
    assert model.backbone.stem.conv.bits == 8 and model.backbone.stem.aq.bits == 8
    assert model.backbone.layer1[0].conv1.bits == 2 and model.backbone.layer1[0].aq1.bits == 4
    assert {m.bits for m in model.projector if isinstance(m, ssl_model.SwitchLinear)} == {8}
    assert not any(isinstance(m, ssl_model.SWITCHES) for m in model.predictor.modules())


def test_a_switchable_backbones_state_dict_is_the_plain_models():
    model = ssl_model.make_switchable(siamese())
    plain = create_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8))
    assert list(model.backbone.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.backbone.state_dict())
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(plain.eval()(x), model.backbone.eval()(x))


# --- SSQL's bit draws --------------------------------------------------------------------------------

def test_the_bit_draws_cover_every_pair_with_uniform_frequencies():
    draws = BitDraws((2, 8), (4, 8), seed=7)
    n = 35000
    pairs = [draws.draw() for _ in range(n)]
    counts = draws.counts()
    assert len(counts) == 35 and min(counts.values()) > 0 and sum(counts.values()) == n
    w = pd.Series([p[0] for p in pairs]).value_counts(normalize=True)
    a = pd.Series([p[1] for p in pairs]).value_counts(normalize=True)
    assert sorted(w.index) == list(range(2, 9)) and sorted(a.index) == list(range(4, 9))
    assert (w - 1 / 7).abs().max() < 0.01 and (a - 1 / 5).abs().max() < 0.01
    expected = n / 35  # each of the 35 pairs: a chi-square test at 34 degrees of freedom (p = 0.001: 65.2)
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < 65.2
    assert BitDraws(seed=7).draw() == pairs[0] and [BitDraws(seed=8).draw() for _ in range(5)] != pairs[:5]


def test_the_draws_state_round_trips():
    draws = BitDraws(seed=3)
    for _ in range(10):
        draws.draw()
    state = draws.state_dict()
    later = [draws.draw() for _ in range(20)]
    restored = BitDraws(seed=99)
    restored.load_state_dict(state)
    assert restored.drawn == draws.drawn[:10] and [restored.draw() for _ in range(20)] == later


# --- training on the engine: resume, the collapse guard -------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ssl")
    store = write_store(load_digits_store(seed=123, test_fraction=0.2), root / "store")
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    split = root / "split"
    split.mkdir()
    for name in ("train", "test"):
        part = index[(index["split"] == name) & (index["label"] < 5)][["image", "label"]]
        (part.head(64) if name == "train" else part).to_csv(split / f"{name}0.csv", index=False)
    return store, split


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # resume folders and TensorBoard runs land here
    yield
    torch.set_num_threads(threads)


def ssql_recipe(epochs: int = 3) -> ssl.SslRecipe:
    s = SslSettings("ssql", epochs=epochs, batch_size=16, dim=32, pred_dim=8, lr=0.05)
    runtime = Runtime(device="cpu", seed=5, batch_size=16)
    return ssl.recipe("test-ssql", "resnet20", SslConfig(s, runtime, Schedule(epochs, 0.05, (), 1.0, 0.9, 5e-4)))


class Stop(Plugin):
    name = "stop"

    def before_epoch(self, ctx: TaskContext, epoch: int, rows):
        if epoch == 2:
            raise KeyboardInterrupt("stopped on purpose")  # epochs 0 and 1 are saved
        return None


def test_a_resumed_run_repeats_the_draws_and_ends_with_the_same_weights(data):
    store, split = data
    reference = ssl.train_backbone(ssql_recipe(), store=store, split=split)
    drawn, weights = list(reference.objective.draws.drawn), copy.deepcopy(reference.backbone.state_dict())
    assert len(drawn) == 3 * 4  # 64 images in batches of 16, 3 epochs
    assert [row["epoch"] for row in reference.engine.history] == [1, 2, 3]
    assert all(row["embedding_std"] > 0 for row in reference.engine.history)
    shutil.rmtree(".lq-resume")
    with pytest.raises(KeyboardInterrupt):
        ssl.train_backbone(ssql_recipe(), store=store, split=split, extra_plugins=[Stop()])
    resumed = ssl.train_backbone(ssql_recipe(), store=store, split=split)
    assert resumed.objective.draws.drawn == drawn
    assert all(torch.equal(weights[k], v) for k, v in resumed.backbone.state_dict().items())


class Steps(Plugin):
    name = "steps"

    def __init__(self):
        self.steps = 0

    def after_step(self, model) -> None:
        self.steps += 1


def test_a_finished_backbone_is_taken_from_its_resume_state_until_closed(data):
    """What `pretrain.init` relies on when the supervised part is killed: rerun, the finished
    self-supervised part is not trained again but restored, draws and weights included."""
    store, split = data
    first = ssl.train_backbone(ssql_recipe(epochs=1), store=store, split=split)
    counter = Steps()
    again = ssl.train_backbone(ssql_recipe(epochs=1), store=store, split=split, extra_plugins=[counter])
    assert counter.steps == 0 and again.objective.draws.drawn == first.objective.draws.drawn
    assert all(torch.equal(first.backbone.state_dict()[k], v) for k, v in again.backbone.state_dict().items())
    again.close()
    fresh = Steps()
    ssl.train_backbone(ssql_recipe(epochs=1), store=store, split=split, extra_plugins=[fresh])
    assert fresh.steps == 4  # closed: the next run trains from the start


def test_the_collapse_guard_logs_the_std_and_stops_a_collapsed_embedding():
    objective = SslObjective("simsiam", dim=16, collapse_std=0.1)
    objective.before_epoch(None, 0, None)
    objective._record(torch.randn(64, 16))  # spread over the sphere: about 1/sqrt(16)
    row = {"epoch": 1}
    objective.after_epoch(None, row)
    assert row["embedding_std"] == pytest.approx(1 / math.sqrt(16), rel=0.3)
    objective.before_epoch(None, 1, None)
    objective._record(torch.ones(64, 16) + 1e-4 * torch.randn(64, 16))  # every image: one embedding
    with pytest.raises(LqError, match="simsiam collapsed in epoch 2.*per-dimension std"):
        objective.after_epoch(None, {"epoch": 2})
    off = SslObjective("simsiam", dim=16, collapse_std=0.0)
    off.before_epoch(None, 0, None)
    off._record(torch.ones(8, 16))
    off.after_epoch(None, {"epoch": 1})  # the guard switched off: no error


# --- the views ---------------------------------------------------------------------------------------

def test_views_are_seeded_and_flip_only_when_asked():
    x = torch.rand(64, 1, 8, 8) * 255
    plain = ViewSettings(crop=(1.0, 1.0), rotate=0.0, jitter=0.0, grayscale=0.0, noise=0.0)
    view = Views(plain, hflip=False)(x.clone(), torch.Generator().manual_seed(0))
    assert torch.allclose(view, x, atol=1e-3)  # no change asked for, no flip without hflip (digits)
    flipped = Views(plain, hflip=True)(x.clone(), torch.Generator().manual_seed(0))
    mirrored = torch.isclose(flipped, x.flip(3), atol=1e-3).flatten(1).all(1)
    assert 10 < int(mirrored.sum()) < 54  # about half the views are mirror images
    strong = Views(ViewSettings(), hflip=False)
    a = strong(x.clone(), torch.Generator().manual_seed(1))
    assert torch.equal(a, strong(x.clone(), torch.Generator().manual_seed(1)))
    assert not torch.equal(a, strong(x.clone(), torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 255


# --- linear evaluation -------------------------------------------------------------------------------

def test_linear_evaluation_reads_test_images_only_for_the_score(data):
    store, split = data
    bank = load_bank(store, torch.device("cpu"))
    train, test = (pd.read_csv(split / f"{n}0.csv") for n in ("train", "test"))
    test_rows = bank.rows(test)
    poisoned = dataclasses.replace(bank, images=bank.images.clone())
    poisoned.images[test_rows] = 255 - poisoned.images[test_rows]
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8))
    settings = sweep.Settings(weight_bits=(4, 32), act_bits=(8, 32), calibration_images=32, batch_size=50)
    head = LinearSettings(epochs=3, batch_size=32)
    clean, dirty = (linear.linear_eval(model, b, train, test, settings, head) for b in (bank, poisoned))
    assert clean.ranges == dirty.ranges  # calibration: training images only
    assert all(torch.equal(clean.heads[pair], dirty.heads[pair]) for pair in clean.heads)  # head: training features
    assert clean.accuracy != dirty.accuracy  # the score does read the test images
    with pytest.raises(LqError, match="training images only"):
        linear.linear_eval(model, bank, test, test, settings, head)
    assert clean.classes == [0, 1, 2, 3, 4]


def test_linear_evaluation_at_w32a32_is_the_float_backbone_and_the_stem_floor_holds(data):
    store, split = data
    bank = load_bank(store, torch.device("cpu"))
    train, test = (pd.read_csv(split / f"{n}0.csv") for n in ("train", "test"))
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8)).eval()
    settings = sweep.Settings(weight_bits=(2, 32), act_bits=(4, 32), calibration_images=32, batch_size=50)
    prepared = sweep.ptq.prepare(sweep.ptq.float_view(model))
    sweep.ptq.calibrate(prepared, [(bank.images[bank.rows(train)].float(), None)])
    sweep.ptq.set_bits(prepared, 2, 4)
    linear.set_stem_floor(prepared, 2, 4, 8)
    assert prepared.stem.conv.bits == 8 and prepared.stem.aq.bits == 8 and prepared.layer1[0].conv1.bits == 2
    sweep.ptq.set_bits(prepared, 32, 32)
    linear.set_stem_floor(prepared, 32, 32, 8)
    assert prepared.stem.conv.bits == 32 and prepared.stem.aq.bits == 32
    rows = bank.rows(train)
    with torch.no_grad():
        assert torch.equal(linear.features(prepared, bank, rows, 50), linear.features(model, bank, rows, 50))
    result = linear.linear_eval(model, bank, train, test, settings, LinearSettings(epochs=2))
    assert set(result.accuracy) == {(2, 4), (2, 32), (32, 4), (32, 32)}


# --- parameters and the stage table ------------------------------------------------------------------

def test_simsiam_and_ssql_are_compared_with_the_same_settings():
    methods = lqconfig.read_yaml(REPO_ROOT / "params.yaml")["ssl"]["methods"]
    ssql = {k: v for k, v in methods["ssql"].items() if k not in ("weight_bits", "act_bits", "stem_bits")}
    assert ssql == methods["simsiam"] and methods["scratch"] == {}


def test_pretrain_tracks_the_block_of_the_method_it_starts_from():
    pretrain = stage_by_name("pretrain")
    config = lqconfig.load(REPO_ROOT / "params.yaml")
    assert config["pretrain"]["init"] == "scratch"
    assert pretrain.declared_params({"seed": "0"}, config=config)[-2:] == ["pretrain.init", "ssl.methods.scratch"]
    config["pretrain"]["init"] = "ssql"
    assert pretrain.declared_params({"seed": "0"}, config=config)[-1] == "ssl.methods.ssql"
    assert pretrain.declared_params(item="${{item.{}}}".format)[-1] == "ssl.methods.${pretrain.init}"


def test_a_parameter_reference_must_be_declared_too(tmp_path):
    table = (REPO_ROOT / "workflow" / "stages.yaml").read_text()
    path = tmp_path / "stages.yaml"
    path.write_text(table.replace('pretrain.init,\n             "ssl.methods.{pretrain.init}"]', '"ssl.methods.{pretrain.init}"]'))
    with pytest.raises(LqError, match="names 'pretrain.init', which the stage must declare too"):
        load_table(path)


def test_reversed_ranges_and_a_self_supervised_start_on_several_processes_are_refused():
    raw = lqconfig.read_yaml(REPO_ROOT / "params.yaml")
    with pytest.raises(LqError, match=r"ssl.methods.ssql.weight_bits = \[8, 2\] must be \[low, high\]"):
        lqconfig.resolve(raw, [("ssl.methods.ssql.weight_bits", [8, 2])])
    with pytest.raises(LqError, match="pretrain.init = ssql trains its self-supervised start in one process"):
        lqconfig.resolve(raw, [("pretrain.init", "ssql"), ("train.nproc", 2)])
    with pytest.raises(LqError, match="grid.ssl"):
        lqconfig.resolve(raw, [("grid.ssl", ["byol"])])


def siamese() -> ssl_model.Siamese:
    torch.manual_seed(0)
    return ssl_model.Siamese(create_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8)), 16, 8)
