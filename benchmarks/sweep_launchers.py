"""Wall time of one small sweep under Hydra's basic launcher (one job after another, each with
all cores, and again with one thread) against `hydra/launcher=local` (joblib, n_jobs workers,
each with its share of the cores).

    python benchmarks/sweep_launchers.py                    # steps=3000 repeats=2 n_jobs=2
    python benchmarks/sweep_launchers.py steps=5000 repeats=3

Arguments are key=value (steps, repeats, n_jobs). The two launchers alternate, so drifting load on
the machine hits both alike. Prints a Markdown table for docs/benchmarks.md. Timings are recorded
in the docs, never asserted in tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["dataset=diabetes,digits", "method=ce", "seed=0,1", "logger=none", "runtime.progress=false"]


def parse_args(argv: list[str]) -> dict[str, int]:
    options = {"steps": 3000, "repeats": 2, "n_jobs": 2}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise SystemExit(f"unknown argument {arg!r}; expected key=value with key in {sorted(options)}")
        options[key] = int(value)
    return options


def run_sweep(launcher: list[str], steps: int, sweep_dir: Path) -> tuple[float, list[dict]]:
    """One sweep in a fresh process (start-up included, as a user sees it); returns wall time and
    the jobs' result.json records."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(REPO / "main.py"), "-m", *SWEEP, *launcher,
           f"dataset.steps={steps}", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/result.json"))]
    if len(results) != 4 or any(r["status"] != "done" for r in results):
        raise SystemExit(f"expected 4 finished jobs in {sweep_dir}")
    return wall, results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    opts = parse_args(sys.argv[1:])
    launchers = {
        "basic (sequential)": [],
        # The same one-after-another sweep with one thread per job: separates the gain of running
        # jobs side by side from the cost of PyTorch's threads competing for busy cores.
        "basic, runtime.threads=1": ["runtime.threads=1"],
        f"local, n_jobs={opts['n_jobs']}": ["hydra/launcher=local", f"hydra.launcher.n_jobs={opts['n_jobs']}"],
    }
    walls: dict[str, list[float]] = {name: [] for name in launchers}
    threads: dict[str, int] = {}
    job_train_s: dict[str, list[float]] = {name: [] for name in launchers}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts["repeats"]):
            for name, launcher in launchers.items():
                sweep_dir = Path(tmp) / f"{repeat}-{list(launchers).index(name)}"
                wall, results = run_sweep(launcher, opts["steps"], sweep_dir)
                walls[name].append(wall)
                threads[name] = results[0]["threads"]
                job_train_s[name].append(statistics.mean(r["wall_time_s"]["total"] for r in results))
                print(f"repeat {repeat}: {name}: {wall:.1f} s", flush=True)

    import torch

    print()
    print(f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs available; Python "
          f"{platform.python_version()}, torch {torch.__version__}")  # fmt: skip
    print(f"Load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"Sweep: {' '.join(SWEEP)} dataset.steps={opts['steps']} (4 jobs), {opts['repeats']} repeats")
    print()
    print("| launcher | threads per job | sweep wall time (s), each repeat | median (s) | mean job time (s) "
          "| speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = statistics.median(walls["basic (sequential)"])
    for name in launchers:
        median = statistics.median(walls[name])
        each = ", ".join(f"{w:.1f}" for w in walls[name])
        print(f"| {name} | {threads[name]} | {each} | {median:.1f} | {statistics.mean(job_train_s[name]):.1f} "
              f"| {base / median:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
