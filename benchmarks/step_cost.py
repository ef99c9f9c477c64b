"""What one AdaLFL iteration costs against one plain cross-entropy step.

For each model and each meta-gradient backend, times the real ``train_step`` of ``method=ce`` and
``method=adalfl`` (look-ahead base step, meta-gradient, Adam on phi, write-back) at batch 128 with
its dataset's SGD protocol, and measures their peak memory. Default models: the paper's MLP
(1000-1000 ReLU) and the author's LeNet-5 (tanh, average pooling) on MNIST-shaped data, and the
three-conv small CNN with BatchNorm on CIFAR-shaped data (a BatchNorm network small enough for a
2-core CPU). Optional: ``mlp_small``, ``lenet5_relu``, ``smallcnn`` (no BatchNorm), ``preresnet20``
and, for GPUs, ``resnet18`` and ``wrn16_8``.

Timing: CE and AdaLFL steps alternate (in blocks of ``block``), so that a machine whose speed
drifts slows both alike; the median per-step wall time of each is reported, and
``adalfl_over_ce`` is their ratio.
Memory: each (model, method, backend) runs alone in a fresh subprocess; on CPU the figure is the
growth of the process's peak resident memory over its resident memory after set-up and one
warm-up step (the peak is reset there), with glibc told to map every block of 16 KiB or more
and return it on free, so that resident memory follows the live tensors;
on CUDA ``torch.cuda.max_memory_allocated`` during the steps.

    python benchmarks/step_cost.py                                # CPU, or the first GPU
    python benchmarks/step_cost.py device=cpu threads=2 steps=30 models=[lenet5,smallcnn_bn]
    python benchmarks/step_cost.py cpu_memory=system    # glibc's default allocator behaviour
    python benchmarks/step_cost.py device=cuda models=[mlp,lenet5,smallcnn_bn,preresnet20,resnet18,wrn16_8]

Prints one JSON object; results go in docs/benchmarks.md, never into test assertions.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

from adalfl.core import JobContext
from adalfl.cpu_memory import configure_cpu_memory
from adalfl.data import BatchSampler, Data, Split
from adalfl.losses import Task
from adalfl.methods.adalfl import AdaLFL
from adalfl.methods.ce import CrossEntropy
from adalfl.models.lenet import LeNet5, LeNet5ReLU, SmallCNN
from adalfl.models.resnet import ResNet18, preresnet20
from adalfl.models.simple import MLP
from adalfl.models.wideresnet import wrn16_8
from adalfl.track.metrics import Tracker
from adalfl.utils import resolve_device

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, settings_from_argv, sync

SETTINGS = {
    "device": "auto",
    "threads": 0,  # torch CPU threads (0: torch's default)
    "steps": 100,  # timed steps per method per model and backend
    "block": 1,  # steps per interleaved block (1: CE and AdaLFL alternate step by step)
    "models": ["mlp", "lenet5", "smallcnn_bn"],
    "backends": ["func", "higher"],
    "memory": True,
    "batch_size": 128,
    "channels_last": True,  # image models and batches in NHWC memory format, as jobs do by default (channels_last=true)
    "cpu_memory": "reuse",  # glibc keeps freed memory for reuse during the timings, as jobs do by default
    # internal: one memory measurement in a subprocess
    "only": "",
}

# model -> (constructor, input shape, SGD protocol of its dataset)
MNIST_SGD = dict(lr=0.01)
CIFAR_SGD = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
MODELS = {
    "mlp": (lambda: MLP([1, 28, 28], 10), (1, 28, 28), MNIST_SGD),  # the paper's: 1000-1000 ReLU
    "lenet5": (lambda: LeNet5([1, 28, 28], 10), (1, 28, 28), MNIST_SGD),  # the author's: tanh, average pooling
    "smallcnn_bn": (lambda: SmallCNN([3, 32, 32], 10, batch_norm=True), (3, 32, 32), CIFAR_SGD),
    # optional
    "mlp_small": (lambda: MLP([1, 28, 28], 10, widths=(100, 100)), (1, 28, 28), MNIST_SGD),
    "lenet5_relu": (lambda: LeNet5ReLU([1, 28, 28], 10), (1, 28, 28), MNIST_SGD),
    "smallcnn": (lambda: SmallCNN([3, 32, 32], 10), (3, 32, 32), CIFAR_SGD),
    "preresnet20": (lambda: preresnet20([3, 32, 32], 10), (3, 32, 32), CIFAR_SGD),
    # the paper's larger networks, for GPU runs (models=[resnet18,wrn16_8]); too slow for a 2-core CPU
    "resnet18": (lambda: ResNet18([3, 32, 32], 10), (3, 32, 32), CIFAR_SGD),
    "wrn16_8": (lambda: wrn16_8([3, 32, 32], 10), (3, 32, 32), CIFAR_SGD),
}


def build(name: str, method: str, backend: str, device: torch.device, batch_size: int, channels_last: bool = False):
    """The model, its optimiser and the method's real train_step. The job's splits hold one batch
    of random data each: every step draws it whole (reshuffled), as a job draws its batches."""
    torch.manual_seed(0)
    make, shape, sgd = MODELS[name]
    images = channels_last and len(shape) == 3
    model = make().to(device, memory_format=torch.channels_last if images else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), **sgd)

    def split() -> Split:
        return Split(torch.randn(batch_size, *shape, device=device), torch.randint(0, 10, (batch_size,), device=device))

    data = Data("classification", 10, train=split(), val=split(), test=split(), channels_last=images)
    out_dir = Path(tempfile.gettempdir()) / "adalfl-step-cost"  # never written: no observe(), no logging
    job = JobContext(
        title=f"step_cost / {name} / {method}",
        seed=0,
        out_dir=out_dir,
        device=device,
        task=Task("classification", 10),
        data=data,
        steps=1_000_000,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        log_interval=1,
        eval_interval=1_000_000,
        base_lr=sgd["lr"],
        build_model=lambda: make().to(device),
        build_optimizer=partial(_sgd, sgd),
        train_batches=BatchSampler(data.train, batch_size, seed=0),
        val_batches=BatchSampler(data.val, batch_size, seed=1),
        tracker=Tracker(out_dir),
    )
    if method == "ce":
        impl = CrossEntropy("ce")
    else:
        impl = AdaLFL(
            "adalfl", loss={}, meta={"backend": backend, "init_steps": 0}, plot_every=1
        )  # observe() is never called here
    impl.setup(job, model)
    return lambda: impl.train_step(job, model, optimizer)


def _sgd(settings: dict, params: list[torch.nn.Parameter]):
    optimizer = torch.optim.SGD(params, **settings)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])  # a job's, without milestones


def timed(step, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def time_pair(name: str, backend: str, cfg: dict, device: torch.device) -> dict:
    ce = build(name, "ce", backend, device, cfg["batch_size"], cfg["channels_last"])
    ada = build(name, "adalfl", backend, device, cfg["batch_size"], cfg["channels_last"])
    for _ in range(3):  # warm-up
        ce()
        ada()
    times: dict[str, list[float]] = {"ce": [], "adalfl": []}
    while len(times["ce"]) < cfg["steps"]:
        for label, step in (("ce", ce), ("adalfl", ada)):
            times[label] += [timed(step, device) for _ in range(cfg["block"])]
    ce_ms = 1000 * statistics.median(times["ce"])
    ada_ms = 1000 * statistics.median(times["adalfl"])
    return {"ce_ms": round(ce_ms, 3), "adalfl_ms": round(ada_ms, 3), "adalfl_over_ce": round(ada_ms / ce_ms, 3)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_one(name: str, method: str, backend: str, cfg: dict, device: torch.device) -> float:
    """Peak memory (MB) of a few steps of one method, measured in this (fresh) process."""
    step = build(name, method, backend, device, cfg["batch_size"], cfg["channels_last"])
    if device.type == "cuda":
        step()
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(3):
            step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    step()  # one-time costs (lazy imports, kernel set-up) are not the step's
    before = _status_mb("VmRSS")
    _reset_peak_rss()  # nor is the imports' peak
    for _ in range(3):
        step()
    return _status_mb("VmHWM") - before


def memory(name: str, method: str, backend: str, cfg: dict) -> float:
    args = [
        f"only={name}:{method}:{backend}",
        f"device={cfg['device']}",
        f"threads={cfg['threads']}",
        f"batch_size={cfg['batch_size']}",
        f"channels_last={cfg['channels_last']}",
    ]
    # Large blocks mmap'd and returned on free: resident memory then follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env)
    return round(json.loads(out.stdout)["peak_mb"], 1)


def main(argv: list[str]) -> dict:
    cfg = settings_from_argv(SETTINGS, argv)
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    device = resolve_device(cfg["device"], "device")
    if cfg["only"]:  # memory: freed blocks must go back to the OS (see memory()), so no cpu_memory here
        name, method, backend = cfg["only"].split(":")
        return {"peak_mb": memory_one(name, method, backend, cfg, device)}
    configure_cpu_memory(cfg["cpu_memory"])
    results = {}
    for name in cfg["models"]:
        results[name] = {}
        for backend in cfg["backends"]:
            row = time_pair(name, backend, cfg, device)
            if cfg["memory"]:
                row["ce_peak_mb"] = memory(name, "ce", backend, cfg)
                row["adalfl_peak_mb"] = memory(name, "adalfl", backend, cfg)
            results[name][backend] = row
            print(f"{name:9s} {backend:7s} {json.dumps(row)}", file=sys.stderr, flush=True)
    return {
        "benchmark": "step_cost",
        **machine(device),
        "settings": OmegaConf.to_container(OmegaConf.create(cfg)),
        "results": results,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
