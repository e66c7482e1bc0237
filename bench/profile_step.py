"""Where a training step's time goes: torch.profiler on the FP32 and w4a4 ResNet-20 steps.

    python bench/profile_step.py                 # CPU, batch 128, 32x32 (the `step` bench's setting)
    python bench/profile_step.py --threads 2 --steps 10

One step = forward, cross-entropy, backward, SGD step, on one fixed random CIFAR-shaped batch.
Each model is warmed up, then the two are profiled in alternating rounds of `--steps` steps
(medians over the rounds, so a busy moment of the machine hits both alike); the table lists the operators with
the most self CPU time (time spent in the operator itself, not in what it calls), and the
breakdown groups them: convolution (forward and backward), batch norm, fake quantization (lq's
quantizers and their backward nodes), the optimizer, and the rest. Writes bench/PROFILE.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lq.models import create_model  # noqa: E402
from lq.quant.config import QuantConfig  # noqa: E402
from lq.quant.convert import quantize_model  # noqa: E402
from run import bench_step  # noqa: E402  (bench/run.py: the step bench's alternating medians)

# Operators -> the group a breakdown counts them in: exact aten names, or fragments of the names
# of lq's autograd nodes (first match wins). round/clamp/hardtanh_backward/var_mean appear in the w4a4 step only.
GROUPS = [
    ("convolution", ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution",
                     "aten::convolution", "aten::conv2d", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
                     "aten::_slow_conv2d_backward")),
    ("batch norm", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm",
                    "aten::_batch_norm_impl_index", "aten::_batch_norm_with_update")),
    ("ReLU", ("aten::clamp_min", "aten::threshold_backward", "aten::relu", "aten::relu_")),
    ("fake quantization", ("aten::round", "aten::round_", "aten::clamp", "aten::hardtanh_backward", "aten::ge",
                           "aten::le", "aten::eq", "aten::var_mean",
                           "aten::where", "aten::sign", "Quant", "quant", "ProxQ", "KBit", "Grid")),
    ("optimizer", ("aten::_foreach", "Optimizer", "aten::sgd")),
]


def group_of(name: str) -> str:
    for group, names in GROUPS:
        if any(name == n or (not n.startswith("aten::") and n in name) or
               (n == "aten::_foreach" and name.startswith(n)) for n in names):
            return group
    return "other (elementwise, copies, autograd bookkeeping)"


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def profile_once(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 steps: int) -> dict[str, tuple[float, int]]:
    """Operator -> (self CPU ms per step, calls per step) over `steps` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one_step(model, opt, x, y)
    return {e.key: (e.self_cpu_time_total / steps / 1e3, e.count // steps) for e in prof.key_averages()}


def profile_models(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, rounds: int,
                   steps: int) -> list[dict]:
    """Each model profiled for `steps` steps per round, the models alternating over `rounds` rounds
    (so a busy moment of the machine hits both alike); per operator, the median over rounds."""
    import statistics

    opts = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}
    for name, model in models.items():
        for _ in range(3):
            one_step(model, opts[name], x, y)
    seen: dict[str, list[dict[str, tuple[float, int]]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            seen[name].append(profile_once(model, opts[name], x, y, steps))
    results = []
    for name, runs in seen.items():
        keys = set().union(*runs)
        rows = sorted(((k, statistics.median(r.get(k, (0.0, 0))[0] for r in runs),
                        max(r.get(k, (0.0, 0))[1] for r in runs)) for k in keys), key=lambda row: -row[1])
        groups: dict[str, float] = {}
        for key, ms, _ in rows:
            groups[group_of(key)] = groups.get(group_of(key), 0.0) + ms
        results.append({"name": name, "step_ms": sum(ms for _, ms, _ in rows), "top": rows[:12], "groups": groups})
    return results


def report(results: list[dict], plain: dict, args: argparse.Namespace) -> str:
    fp32, w4a4 = results
    lines = [
        "# Where a training step's time goes",
        "",
        f"`python bench/profile_step.py --threads {args.threads} --steps {args.steps} --rounds {args.rounds}`: ResNet-20, batch {args.batch}, "
        f"3x32x32 random images, 100 classes, SGD with momentum; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s). Self CPU time per step (median over rounds), "
        "summed over operators (the profiler's own overhead included, so the total is above a plain step's time).",
        "",
        f"Unprofiled step (`bench/run.py`'s step bench: median of alternating rounds): w4a4 / FP32 = {plain['w4a4_step_ms']:.1f} / {plain['fp32_step_ms']:.1f} ms = "
        f"**{plain['ratio']:.2f}x**; profiled: {w4a4['step_ms']:.1f} / {fp32['step_ms']:.1f} ms = "
        f"{w4a4['step_ms'] / fp32['step_ms']:.2f}x (the profiler adds about the same time per operator call to both).",
        "",
        "| group | FP32 ms/step | w4a4 ms/step | w4a4 - FP32 |",
        "|---|---:|---:|---:|",
    ]
    for group in [g for g, _ in GROUPS] + [group_of("")]:
        a, b = fp32["groups"].get(group, 0.0), w4a4["groups"].get(group, 0.0)
        lines.append(f"| {group} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    for result in results:
        lines += ["", f"## {result['name']}: the operators with the most self CPU time", "",
                  "| operator | ms/step | calls/step |", "|---|---:|---:|"]
        lines += [f"| `{key}` | {ms:.2f} | {calls} |" for key, ms, calls in result["top"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per model and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians over them)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    models = []
    for bits in (None, 4):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=100, in_channels=3, image_size=32)
        models.append(quantize_model(model, QuantConfig(weight_bits=bits, act_bits=bits)) if bits else model)
    results = profile_models(dict(zip(("FP32", "w4a4 ProxQ"), models)), x, y, args.rounds, args.steps)
    text = report(results, bench_step(torch.device("cpu"), batch=args.batch), args)
    (REPO / "bench" / "PROFILE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
