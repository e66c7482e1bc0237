"""lq benchmarks: ratios measured side by side in one run (not part of the test suite).

    python bench/run.py            # all benchmarks, writes bench/results.json and bench/RESULTS.md
    python bench/run.py data step  # a subset

- data:     lq's in-memory batches vs a reference-style loader (PIL decode of PNGs from a folder
            tree through torch DataLoader), same images, batch size and augmentation. Target >= 20x.
- step:     ResNet-20 w4a4 QAT training step time / FP32 step time, 32x32 inputs. Target <= 1.15x.
- alloc:    the w4a4 step in fresh processes with glibc's default allocator settings and with
            `lq.memory.keep_freed_memory` (set by every `python -m lq` stage), alternating: page
            faults, system time and wall time per step.
- overhead: wall time of a no-op `snakemake -n all` and of `dvc status`. Target < 2 s each.
- e2e:      the embedded default pipeline (`snakemake --cores 2 all`) from scratch. Target <= 180 s.
- gpu:      when CUDA is present, a w4a4 epoch on CIFAR-100-sized data: images/s and ratio to FP32.
- peers:    lq vs Avalanche (the `bench` extra) on the same w4a4 ResNet-20 and digits stream:
            finetune vs Naive, ewc vs EWC, per-epoch and whole-stage time ratios and both accuracy
            matrices, plus one FP32 epoch at 32x32 (bench/peers.py).
- fashion:  the same at Fashion-MNIST size (the `fashion-cpu` stream, 28x28, batch 128): lq
            finetune eager and compiled (cold and warm Inductor cache) vs Avalanche Naive, per
            epoch and per stage, compilation included; peak memory.

A subset keeps the other sections of bench/results.json (each with the time it was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lq.data.sources import load_folder  # noqa: E402
from lq.data.store import write_store  # noqa: E402
from lq.models import create_model  # noqa: E402
from lq.quant.config import QuantConfig  # noqa: E402
from lq.quant.convert import quantize_model  # noqa: E402
from lq.train.data import Augment, Batches, load_bank  # noqa: E402

SECTIONS = ("data", "step", "alloc", "pipeline", "gpu", "peers", "fashion")
MAIN_TABLE = ("data", "step", "alloc", "pipeline", "gpu")  # the rows of the first table (peers has its own)
TARGETS = {"data": (">=", 20.0), "step": ("<=", 1.15), "snakemake_noop_s": ("<", 2.0), "dvc_status_s": ("<", 2.0),
           "e2e_s": ("<=", 180.0)}


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_png_tree(root: Path, n_per_class: int, classes: int, size: int = 32, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def bench_data(workdir: Path, images: int = 5000, batch: int = 128) -> dict:
    """Batches per second over one epoch of the same PNGs, both pipelines augmenting."""
    import torchvision.transforms as T
    from PIL import Image

    classes = 10
    tree = workdir / "pngs"
    write_png_tree(tree, images // classes, classes)

    class FolderDataset(torch.utils.data.Dataset):  # the reference's shape: one PIL decode per sample
        def __init__(self, root: Path):
            self.items = [(p, c) for c, d in enumerate(sorted((root / "train").iterdir())) for p in sorted(d.iterdir())]
            self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                        T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, label = self.items[i]
            return self.transform(Image.open(path).convert("RGB")), label

    loader = torch.utils.data.DataLoader(FolderDataset(tree), batch_size=batch, shuffle=True,
                                         num_workers=min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    n_ref = sum(1 for _ in loader)
    ref_s = time.perf_counter() - start

    store_dir = workdir / "store"
    write_store(load_folder(tree), store_dir)
    bank = load_bank(store_dir, torch.device("cpu"))
    train = torch.from_numpy(np.char.startswith(np.array(list(bank.row_of)), "train/")).nonzero().flatten()
    batches = Batches(bank, train, batch, shuffle=True, augment=Augment(pad=4, hflip=True))
    runs = []
    for epoch in range(3):
        start = time.perf_counter()
        n_lq = sum(1 for _ in batches.epoch((0, 0, epoch)))
        runs.append(time.perf_counter() - start)
    lq_s = statistics.median(runs)
    return {"images": images, "batch": batch, "reference_batches_per_s": n_ref / ref_s,
            "lq_batches_per_s": n_lq / lq_s, "ratio": (n_lq / lq_s) / (n_ref / ref_s)}


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(steps):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench_step(device: torch.device, batch: int = 128, rounds: int = 5, steps: int = 5) -> dict:
    """Median step time of FP32 and w4a4 ResNet-20, measured in alternating rounds."""
    torch.manual_seed(0)
    fp32 = create_model("resnet20", num_classes=100, in_channels=3, image_size=32).to(device)
    torch.manual_seed(0)
    q = quantize_model(create_model("resnet20", num_classes=100, in_channels=3, image_size=32),
                       QuantConfig(weight_bits=4, act_bits=4)).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    step_time(fp32, x, y, 2), step_time(q, x, y, 2)  # warm-up
    t_fp, t_q = [], []
    for _ in range(rounds):
        t_fp += step_time(fp32, x, y, steps)
        t_q += step_time(q, x, y, steps)
    fp, qq = statistics.median(t_fp), statistics.median(t_q)
    return {"device": str(device), "batch": batch, "fp32_step_ms": 1e3 * fp, "w4a4_step_ms": 1e3 * qq, "ratio": qq / fp}


ALLOC_CHILD = """
import json, resource, statistics, sys
import torch
from lq.memory import keep_freed_memory
from lq.models import create_model
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
sys.path.insert(0, "bench")
from run import step_time

keep, threads, steps = sys.argv[1] == "keep", int(sys.argv[2]), int(sys.argv[3])
applied = keep_freed_memory() if keep else False
torch.set_num_threads(threads)
torch.manual_seed(0)
model = quantize_model(create_model("resnet20", num_classes=100, in_channels=3, image_size=32), QuantConfig(4, 4))
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 100, (128,))
step_time(model, x, y, 4)  # the heap settles
before = resource.getrusage(resource.RUSAGE_SELF)
times = step_time(model, x, y, steps)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"applied": applied, "step_ms": 1e3 * statistics.median(times),
                  "faults": (after.ru_minflt - before.ru_minflt) / steps,
                  "sys_ms": 1e3 * (after.ru_stime - before.ru_stime) / steps,
                  "user_ms": 1e3 * (after.ru_utime - before.ru_utime) / steps, "max_rss_mb": after.ru_maxrss / 1024}))
"""


def bench_alloc(rounds: int = 3, steps: int = 8) -> dict:
    """The w4a4 ResNet-20 CPU step (batch 128, 32x32) in fresh processes, glibc's defaults against
    `keep_freed_memory`, alternating; medians over rounds. An allocator setting is per process,
    so the two cannot share one."""
    runs: dict[str, list[dict]] = {"default": [], "keep": []}
    for r in range(rounds):
        for mode in (("default", "keep") if r % 2 == 0 else ("keep", "default")):
            out = subprocess.run([sys.executable, "-c", ALLOC_CHILD, mode, str(torch.get_num_threads()), str(steps)],
                                 cwd=REPO, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    med = {mode: {k: statistics.median(run[k] for run in rs) for k in ("step_ms", "faults", "sys_ms", "user_ms", "max_rss_mb")}
           for mode, rs in runs.items()}
    return {"batch": 128, "applied": all(run["applied"] for run in runs["keep"]), "default": med["default"],
            "keep": med["keep"], "ratio": med["default"]["step_ms"] / med["keep"]["step_ms"]}


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def project_copy(workdir: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import copy_project, tool_env  # the tests' notion of a fresh clone

    root = copy_project(workdir / "repo")
    env = tool_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def bench_pipeline(workdir: Path) -> dict:
    """End-to-end wall time of the default pipeline, then the no-op overheads on its result."""
    root, env = project_copy(workdir)
    e2e = timed(["snakemake", "--cores", "2", "all"], root, env)
    subprocess.run(["dvc", "commit", "-f"], cwd=root, env=env, check=True, capture_output=True)
    noop = statistics.median(timed(["snakemake", "-n", "all"], root, env) for _ in range(3))
    status = statistics.median(timed(["dvc", "status"], root, env) for _ in range(3))
    return {"e2e_s": e2e, "snakemake_noop_s": noop, "dvc_status_s": status}


def bench_gpu(images: int = 50000, batch: int = 128) -> dict:
    """A w4a4 and an FP32 epoch of ResNet-20 over CIFAR-100-sized data held on the GPU."""
    device = torch.device("cuda")
    out = {}
    for name, bits in (("fp32", 32), ("w4a4", 4)):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=100, in_channels=3, image_size=32)
        if bits < 32:
            model = quantize_model(model, QuantConfig(weight_bits=bits, act_bits=bits))
        model = model.to(device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 100, (batch,), device=device)
        step_time(model, x, y, 5)
        steps = images // batch
        seconds = sum(step_time(model, x, y, steps))
        out[f"{name}_images_per_s"] = steps * batch / seconds
    out["ratio"] = out["fp32_images_per_s"] / out["w4a4_images_per_s"]
    return out


def verdict(name: str, value: float) -> str:
    op, target = TARGETS[name]
    ok = {"<": value < target, "<=": value <= target, ">=": value >= target}[op]
    return f"{'met' if ok else 'MISSED'} (target {op} {target:g})"


def merged(results: dict, which: list[str], old: dict) -> dict:
    """`results` plus the sections of the previous results (`old`) that this run did not measure;
    a run of peers alone keeps the old machine and date for the main table it did not remeasure."""
    kept = {k: v for k, v in old.items() if k in SECTIONS and k not in which}
    # each main-table row keeps the date it was measured (results.json before this field: the file's date)
    kept = {k: {"when": old.get("when"), **v} if k in MAIN_TABLE else v for k, v in kept.items()}
    results = {k: {"when": results["when"], **v} if k in MAIN_TABLE else v for k, v in results.items()}
    if kept and not any(k in results for k in MAIN_TABLE):
        results = {**results, "machine": old.get("machine", results["machine"]), "when": old.get("when", results["when"])}
    return {**kept, **results}


def measured_line(results: dict) -> str:
    """When the main table was measured: one date when one run made every row, else each row's."""
    whens = {k: results[k].get("when", results["when"]) for k in MAIN_TABLE if k in results}
    if len(set(whens.values())) <= 1:
        return f"Measured {next(iter(whens.values()), results['when'])} with `python bench/run.py` (all figures from one run)."
    return ("Measured with `python bench/run.py` in separate runs (a subset run keeps the rows it does not "
            "remeasure): " + "; ".join(f"{k} {when}" for k, when in whens.items()) + ".")


def notes(text: str) -> list[str]:
    """The hand-written notes under the main table of a RESULTS.md text, kept across runs."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Notes")), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return ["", *lines[start:end]]


def read_if(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def write_report(results: dict) -> None:
    (REPO / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = ["# lq benchmark results", "", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), Python {m['python']}" + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU") + ".",
             measured_line(results), "",
             "| benchmark | measured | ratio / value | target |", "|---|---|---|---|"]
    if "data" in results:
        d = results["data"]
        lines.append(f"| data: lq batches vs PIL+DataLoader ({d['images']} PNGs, batch {d['batch']}) | "
                     f"{d['lq_batches_per_s']:.1f} vs {d['reference_batches_per_s']:.1f} batches/s | {d['ratio']:.1f}x | "
                     f"{verdict('data', d['ratio'])} |")
    if "step" in results:
        s = results["step"]
        lines.append(f"| step: ResNet-20 w4a4 / FP32, batch {s['batch']}, {s['device']} | "
                     f"{s['w4a4_step_ms']:.1f} vs {s['fp32_step_ms']:.1f} ms | {s['ratio']:.2f}x | {verdict('step', s['ratio'])} |")
    if "alloc" in results:
        a, d, k = results["alloc"], results["alloc"]["default"], results["alloc"]["keep"]
        lines.append(f"| alloc: w4a4 step, glibc defaults / `keep_freed_memory` (fresh processes, batch {a['batch']}) | "
                     f"{d['step_ms']:.1f} vs {k['step_ms']:.1f} ms; page faults {d['faults']:.0f} vs {k['faults']:.0f}, "
                     f"system time {d['sys_ms']:.1f} vs {k['sys_ms']:.1f} ms per step; peak memory {d['max_rss_mb']:.0f} vs "
                     f"{k['max_rss_mb']:.0f} MB | {a['ratio']:.2f}x | |")
    if "pipeline" in results:
        p = results["pipeline"]
        lines += [f"| overhead: no-op `snakemake -n all` | {p['snakemake_noop_s']:.2f} s | | {verdict('snakemake_noop_s', p['snakemake_noop_s'])} |",
                  f"| overhead: `dvc status` | {p['dvc_status_s']:.2f} s | | {verdict('dvc_status_s', p['dvc_status_s'])} |",
                  f"| end to end: default pipeline, `snakemake --cores 2 all` | {p['e2e_s']:.1f} s | | {verdict('e2e_s', p['e2e_s'])} |"]
    if "gpu" in results:
        g = results["gpu"]
        lines.append(f"| GPU: ResNet-20 epoch, 50k 32x32 images | w4a4 {g['w4a4_images_per_s']:.0f}, FP32 "
                     f"{g['fp32_images_per_s']:.0f} images/s | {g['ratio']:.2f}x | |")
    else:
        lines.append("| GPU | not measured: no CUDA device on this machine | | |")
    lines += notes(read_if(REPO / "bench" / "RESULTS.md"))
    while lines and not lines[-1].strip():
        lines.pop()
    if "peers" in results:
        from peers import report_lines

        lines += report_lines(results["peers"])
    if "fashion" in results:
        from peers import fashion_lines

        lines += fashion_lines(results["fashion"])
    (REPO / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=list(SECTIONS),
                        help="benchmarks to run: " + " ".join(SECTIONS))
    args = parser.parse_args()
    results: dict = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="lq-bench-") as tmp:
        workdir = Path(tmp)
        if "data" in args.which:
            results["data"] = bench_data(workdir)
            print("data", json.dumps(results["data"]), flush=True)
        if "step" in args.which:
            results["step"] = bench_step(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            print("step", json.dumps(results["step"]), flush=True)
        if "alloc" in args.which and sys.platform.startswith("linux"):
            results["alloc"] = bench_alloc()
            print("alloc", json.dumps(results["alloc"]), flush=True)
        if "pipeline" in args.which:
            results["pipeline"] = bench_pipeline(workdir)
            print("pipeline", json.dumps(results["pipeline"]), flush=True)
        if "gpu" in args.which and torch.cuda.is_available():
            results["gpu"] = bench_gpu()
            print("gpu", json.dumps(results["gpu"]), flush=True)
        if "peers" in args.which:
            from peers import bench_peers

            peers = bench_peers(workdir / "peers")
            results["peers"] = {**peers, "machine": machine(), "when": results["when"]}
            print("peers", json.dumps({k: v for k, v in peers.items() if not k.endswith("_vs_naive") and k not in ("ewc_vs_ewc", "finetune_compiled")}),
                  flush=True)
            for key in ("finetune_vs_naive", "ewc_vs_ewc"):
                c = peers[key]
                print(f"peers {key}: epoch ratio {c['epoch_ratio']:.2f}x, stage ratio {c['stage_ratio']:.2f}x", flush=True)
            c = peers["finetune_compiled"]
            print(f"peers finetune compiled: epoch ratio {c['epoch_ratio']:.2f}x ({c['speedup_over_eager']:.2f}x eager lq's "
                  f"epoch beside it); stage ratio "
                  f"{c['stage_ratio']['cold']:.2f}x / {c['stage_ratio']['warm']:.2f}x and compile "
                  f"{c['compile_s']['cold']:.1f} / {c['compile_s']['warm']:.1f} s (cold / warm Inductor cache)", flush=True)
        if "fashion" in args.which:
            from peers import bench_fashion

            fashion = bench_fashion(workdir / "fashion")
            results["fashion"] = {**fashion, "machine": machine(), "when": results["when"]}
            c = fashion["finetune"]
            print(f"fashion: eager stage ratio {c['eager_stage_ratio']:.2f}x, compiled stage ratio "
                  f"{c['stage_ratio']['cold']:.2f}x / {c['stage_ratio']['warm']:.2f}x (cold / warm), compiled epoch "
                  f"ratio {c['epoch_ratio']:.2f}x, peak {fashion['peak_rss_mb']:.0f} MB", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    old = read_if(REPO / "bench" / "results.json")
    write_report(merged(results, args.which, json.loads(old) if old else {}))
    print((REPO / "bench" / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
