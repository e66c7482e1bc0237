"""Bad input gets a clear error and loses nothing: one table, one row per mistake a user makes.

Every row runs the real code path and checks that the message names the key or the file and
says what would be right. Parameter rows go through `lq.config.resolve` (what every step and
the Snakefile call first); file rows through the functions the stages call.
"""

from __future__ import annotations

import copy
import re
import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lq import atomic
from lq import config as lqconfig
from lq.config import REPO_ROOT
from lq.data.sources import load_folder
from lq.errors import LqError
from lq.methods import create_method
from lq.models import create_model
from lq.io import read_table
from lq.tasks import task_classes
from lq.train import checkpoint
from lq.train.engine import fit
from tests.conftest import this_thread_only
from lq.train.settings import Schedule

RAW = lqconfig.read_yaml(REPO_ROOT / "params.yaml")

# (key, value, words the message must contain besides the key)
PARAMS = [
    ("seed", -1, "0 to 2**32-1"),
    ("seed", "123", "integer"),
    ("data.source", "cifar10", "not one of ['digits', 'cifar100', 'fashion_mnist', 'mnist', 'folder']"),
    ("data.test_fraction", 0, "(0, 1)"),
    ("data.download", "yes", "true/false"),
    ("split.num_tasks", 0, "integer >= 1"),
    ("split.num_tasks", "three", "integer"),
    ("split.diminish_rate", 25, "0.25, not 25"),
    ("split.diminish_rate", 1, "[0, 1)"),
    ("replay.replay_rate", 0, "(0, 1]"),
    ("replay.replay_rate", 2, "(0, 1]"),
    ("model.arch", "resnet18", "registered model name"),
    ("model.act_range", 0, "> 0"),
    ("grid.quantizer", ["apot"], "QAT weight quantizer"),
    ("grid.quantizer", [], "non-empty list"),
    ("train.device", "tpu", "auto, cpu, cuda or cuda:N"),
    ("train.batch_size", 0, ">= 1"),
    ("train.momentum", 1.5, "[0, 1)"),
    ("train.augment", "True", "true/false"),
    ("pretrain.epochs", 0, ">= 1"),
    ("pretrain.lr", -0.1, "> 0"),
    ("qat8.weight_bits", 16, "bit width"),
    ("grid.bits", ["w4a0"], "wKaK"),
    ("grid.method", ["icarl"], "lifelong method name"),
    ("grid.seed", ["0"], "training seed"),
    ("lifelong.methods.mas.ll_lambda", -5, ">= 0"),
    ("lifelong.methods.ewc.ball_form", "mixed", "additive or multiplicative"),
    ("quantizers.inq.portions", [0.5, 0.5, 1], "increase strictly"),
    ("quantizers.inq.portions", [0.5, 0.75], "end at 1"),
    ("quantizers.inq.partition", "smallest", "magnitude (largest |w|) or random"),
    ("quantizers.inq.milestones", [5], "beyond quantizers.inq.epochs_per_phase = 2"),
    ("quantizers.inq.epochs_per_phase", 0, ">= 1"),
]

# Cross-key problems of power-of-two quantizers: (overrides, words of the message).
POW2_PARAMS = [
    ({"grid.quantizer": ["inq"], "grid.bits": ["w1a4"]}, "grid.bits w1a4 = 1"),
    ({"grid.quantizer": ["inq"], "grid.bits": ["w32a32"]}, "grid.bits w32a32 = 32"),
    ({"grid.quantizer": ["pow2"], "qat8.weight_bits": 1}, "qat8.weight_bits = 1"),
    ({"grid.quantizer": ["proxq", "inq"], "qat8.weight_bits": 32}, "grid.quantizer inq"),
]


@pytest.mark.parametrize("overrides,words", POW2_PARAMS, ids=[str(o) for o, _ in POW2_PARAMS])
def test_power_of_two_bit_widths_are_checked_across_keys(overrides, words):
    raw = copy.deepcopy(RAW)
    for key, value in overrides.items():
        lqconfig.set_key(raw, key, value)
    with pytest.raises(LqError) as info:
        lqconfig.resolve(raw)
    assert words in str(info.value) and "2 to 8 bits" in str(info.value), str(info.value)


def test_pow2_at_32_bits_and_inq_at_2_to_8_bits_are_accepted():
    raw = copy.deepcopy(RAW)
    lqconfig.set_key(raw, "grid.quantizer", ["pow2", "inq"])
    lqconfig.set_key(raw, "grid.bits", ["w2a32", "w8a8"])
    lqconfig.resolve(raw)
    lqconfig.set_key(raw, "grid.quantizer", ["pow2"])
    lqconfig.set_key(raw, "grid.bits", ["w32a4"])
    lqconfig.resolve(raw)


@pytest.mark.parametrize("key,value,words", PARAMS, ids=[f"{k}={v!r}" for k, v, _ in PARAMS])
def test_bad_parameter(key, value, words):
    raw = copy.deepcopy(RAW)
    lqconfig.set_key(raw, key, value)
    with pytest.raises(LqError) as info:
        lqconfig.resolve(raw)
    message = str(info.value)
    # a list entry is named with its index: grid.method.0 = "icarl"
    assert re.search(rf"{re.escape(key)}(\.\d+)? = ", message) and words in message, message


def test_unknown_key_is_named():
    raw = copy.deepcopy(RAW)
    raw["lifelong"]["lambda"] = 1
    with pytest.raises(LqError, match=r"lifelong\.lambda: unknown key .*allowed here: .*methods"):
        lqconfig.resolve(raw)


def test_params_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("split: [unclosed\n")
    # file:line:column of where the parser stopped, and where the list was opened
    with pytest.raises(LqError, match=re.escape(f"{bad}:2:1: not valid YAML") + r".*opened at 1:8"):
        lqconfig.load(bad)


def test_more_tasks_than_classes():
    with pytest.raises(LqError, match="split.num_tasks = 11 is more than the 10 classes"):
        task_classes(10, 11, 0.0, seed=123)


# --- files ------------------------------------------------------------------------------------

def _tree(root: Path) -> Path:
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_class_folder_without_images(tmp_path):
    root = _tree(tmp_path / "tree")
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    with pytest.raises(LqError, match="dog"):
        load_folder(root)


def test_truncated_png(tmp_path):
    root = _tree(tmp_path / "tree")
    image = root / "train" / "cat" / "1.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(LqError) as info:
        load_folder(root)
    assert str(image) in str(info.value)


def test_file_that_is_not_an_image(tmp_path):
    root = _tree(tmp_path / "tree")
    fake = root / "test" / "dog" / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(LqError) as info:
        load_folder(root)
    assert str(fake) in str(info.value)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "train0.csv"
    path.write_text("image,class\ntrain/cat/0.png,0\n")
    with pytest.raises(LqError, match=r"train0.csv: missing column\(s\) \['label'\]"):
        read_table(path, num_classes=2)


def test_csv_label_outside_the_classes(tmp_path):
    path = tmp_path / "train0.csv"
    path.write_text("image,label\ntrain/cat/0.png,7\n")
    with pytest.raises(LqError, match=r"label 7 of 'train/cat/0.png' is outside the 2 classes \(0..1\)"):
        read_table(path, num_classes=2)


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    path = tmp_path / "qat8.pt"
    model = create_model("resnet20", num_classes=3, in_channels=1, image_size=8)
    checkpoint.save(path, {"model": model.state_dict(),
                           "config": {"arch": "resnet20", "weight_bits": 8, "act_bits": 8}})
    return path


@pytest.mark.parametrize("key,wanted", [("arch", "mobilenetv2"), ("weight_bits", 4)])
def test_checkpoint_of_another_model_or_bit_width(saved_checkpoint, key, wanted):
    with pytest.raises(LqError) as info:
        checkpoint.load(saved_checkpoint, {key: wanted})
    message = str(info.value)
    assert str(saved_checkpoint) in message and key in message and repr(wanted) in message


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(LqError, match="not a readable lq checkpoint"):
        checkpoint.load(path)


class _NaNBatches:
    def __len__(self):
        return 2

    def epoch(self, seed):
        x = torch.zeros(4, 1, 8, 8)
        x[0, 0, 0, 0] = float("nan")
        for _ in range(2):
            yield x, torch.zeros(4, dtype=torch.int64)


def test_nan_loss_stops_with_epoch_step_and_hint():
    model = create_model("resnet20", num_classes=2, in_channels=1, image_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LqError, match=r"task 0, epoch 1, step 1: the loss is nan.*Lower the learning rate"):
        fit(model, _NaNBatches(), Schedule(1, 0.1, (), 0.1, 0.9, 0.0), [create_method("finetune")])
    # it stopped before the optimizer stepped on the NaN: the weights are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point()
               and "running" not in k)


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "train0.csv"
    target.parent.mkdir()

    def full_disk(self, data, *args, **kwargs):
        with open(self, "w") as fh:  # half of the bytes reach the disk, then it is full
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", this_thread_only(full_disk, Path.write_text))
    with pytest.raises(OSError) as info:
        atomic.write_text(target, "image,label\n" + "train/cat/0.png,0\n" * 100)
    assert info.value.errno == errno.ENOSPC
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary is left


def test_full_disk_while_writing_a_folder_keeps_the_old_one(tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    (out / "train0.csv").write_text("old\n")
    with pytest.raises(OSError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "train0.csv").write_text("new, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "train0.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    """SIGKILL skips `finally`: the temporary stays, never under the final name; the rerun's write
    of the same output clears it (and DVC/git ignore `.*.tmp` meanwhile)."""
    target = tmp_path / "metrics" / "run.json"
    target.parent.mkdir()
    stale_file = target.parent / ".run.json.k1ll3d.tmp"
    stale_file.write_text('{"half": ')
    stale_dir = tmp_path / ".store.k1ll3d.tmp"
    stale_dir.mkdir()
    (stale_dir / "images.npy").write_bytes(b"half")
    (target.parent / ".other.json.abc.tmp").write_text("not ours")
    atomic.write_text(target, "{}\n")
    with atomic.atomic_dir(tmp_path / "store") as tmp:
        (tmp / "images.npy").write_bytes(b"whole")
    assert not stale_file.exists() and not stale_dir.exists()
    assert (target.parent / ".other.json.abc.tmp").exists()  # another output's temporary is not touched
    assert target.read_text() == "{}\n" and (tmp_path / "store" / "images.npy").read_bytes() == b"whole"


def test_deterministic_switch_trains_on_cpu_and_is_reported_by_torch():
    from lq.methods import create_method
    from lq.train.device import use_deterministic_kernels
    from lq.train.engine import fit
    from lq.train.settings import Schedule

    class Batches:
        def __len__(self):
            return 2

        def epoch(self, seed):
            g = torch.Generator().manual_seed(0)
            for _ in range(2):
                yield torch.randn(4, 3, generator=g), torch.tensor([0, 1, 0, 1])

    def train():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        fit(model, Batches(), Schedule(2, 0.1, (), 0.1, 0.9, 0.0), [create_method("finetune")])
        return model

    plain = train()
    try:
        use_deterministic_kernels(True)
        assert torch.are_deterministic_algorithms_enabled()
        strict = train()
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(plain.parameters(), strict.parameters()):
        assert torch.equal(a, b)  # on CPU the switch changes nothing
    use_deterministic_kernels(False)
    assert not torch.are_deterministic_algorithms_enabled()
