"""What the device-resident data pipeline costs per training step.

Trains LeNet-5 with SGD on MNIST-shaped data two ways and compares steps per second:
  pipeline: uint8 images on the device, batches drawn by ``BatchSampler`` and converted,
            normalised (and, for the CIFAR-shaped case, cropped and flipped) by ``ImageTransform``;
  prebuilt: the same number of batches made float and normalised beforehand, so a step is only
            forward, backward and the optimiser update.
The overhead is 1 - pipeline / prebuilt steps per second; the target is at most 10%.
Repeats alternate between the two so that a busy machine slows both alike; the best repeat of
each is reported (as timeit does: interference only ever slows a run down), all repeats listed.

    python benchmarks/data_cost.py                       # CPU or the first GPU
    python benchmarks/data_cost.py device=cpu threads=1 steps=100 repeats=7

Prints one JSON object. Results are recorded in docs/benchmarks.md, never asserted in tests.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from adalfl.data import BatchSampler, Split
from adalfl.data.images import ImageTransform
from adalfl.models.lenet import LeNet5
from adalfl.utils import resolve_device

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import settings_from_argv, sync

# threads: torch CPU threads (0 = torch's default).
SETTINGS = {"device": "auto", "threads": 0, "steps": 100, "repeats": 7, "batch_size": 128, "n_train": 54000}


def time_steps(step: Callable[[int], None], steps: int, device: torch.device) -> float:
    """Steps per second of ``step`` over ``steps`` calls (after 10 warm-up calls)."""
    for i in range(10):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps / (time.perf_counter() - start)


def measure(shape: tuple[int, int, int], augment: list[str], cfg: dict, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (cfg["n_train"], *shape), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, 10, (cfg["n_train"],), generator=gen).to(device)
    transform = ImageTransform([0.5] * shape[0], [0.25] * shape[0], augment)
    sampler = BatchSampler(Split(x, y), cfg["batch_size"], seed=0)
    # Pre-built: enough distinct float batches to cycle through, made before timing starts.
    prebuilt = []
    for _ in range(16):
        xb, yb = sampler.next()
        prebuilt.append((transform(xb, True).contiguous(), yb))

    torch.manual_seed(0)
    model = LeNet5(list(shape), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_on(xb: torch.Tensor, yb: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()

    def pipeline_step(i: int) -> None:
        xb, yb = sampler.next()
        train_on(transform(xb, True), yb)

    def prebuilt_step(i: int) -> None:
        train_on(*prebuilt[i % len(prebuilt)])

    def data_only_step(i: int) -> None:
        xb, _ = sampler.next()
        transform(xb, True)

    runs: dict[str, list[float]] = {"pipeline": [], "prebuilt": [], "data_only": []}
    for _ in range(cfg["repeats"]):
        runs["pipeline"].append(time_steps(pipeline_step, cfg["steps"], device))
        runs["prebuilt"].append(time_steps(prebuilt_step, cfg["steps"], device))
        runs["data_only"].append(time_steps(data_only_step, cfg["steps"], device))
    best = {k: max(v) for k, v in runs.items()}
    return {
        "input_shape": list(shape),
        "augment": augment,
        "pipeline_steps_per_s": round(best["pipeline"], 1),
        "prebuilt_steps_per_s": round(best["prebuilt"], 1),
        "overhead_fraction": round(1 - best["pipeline"] / best["prebuilt"], 4),
        "data_ms_per_batch": round(1000 / best["data_only"], 3),
        "step_ms_prebuilt": round(1000 / best["prebuilt"], 3),
        "repeats_pipeline": [round(v, 1) for v in runs["pipeline"]],
        "repeats_prebuilt": [round(v, 1) for v in runs["prebuilt"]],
    }


def main(argv: list[str]) -> dict:
    cfg = settings_from_argv(SETTINGS, argv)
    device = resolve_device(cfg["device"], "device")
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    result = {
        "benchmark": "data_cost",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "settings": cfg,
        "mnist_lenet5": measure((1, 28, 28), [], cfg, device),
        "cifar_shaped_lenet5_crop_flip": measure((3, 32, 32), ["crop", "flip"], cfg, device),
        "target_overhead_fraction": 0.10,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
