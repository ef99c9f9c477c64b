"""runtime.cpu_memory=reuse: freed tensor memory stays in the process, so a training step does not fault
its pages back in from the kernel every time (see src/adalfl/cpu_memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adalfl.cpu_memory import configure_cpu_memory

# Ten training steps of a two-layer CNN (8 MiB activations) after ten warm-up steps: the minor
# page faults of each step.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from adalfl.cpu_memory import configure_cpu_memory
    torch.set_num_threads(1)
    print(configure_cpu_memory(sys.argv[1]))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(64, 3, 32, 32)
    for _ in range(10):
        net(x).sum().backward()
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x).sum().backward()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faulting_steps(setting: str) -> tuple[str, int]:
    """Whether the setting took effect, and how many of the ten steps faulted in over 1000 pages."""
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    applied, *faults = out.stdout.split()
    return applied, sum(int(f) > 1000 for f in faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_stops_page_faults_on_repeated_allocations() -> None:
    applied, reuse = _faulting_steps("reuse")
    assert applied == "True"
    _, system = _faulting_steps("system")
    # glibc's default: freed blocks go back to the kernel, so (almost) every step faults them back
    # in (measured 8 to 10 of 10 steps, 1,500 to 5,600 pages each)
    assert system >= 6
    # reused: no step faults, or one when the heap grows once more (measured 0 of 10 in ten runs)
    assert reuse <= 2


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_memory"):
        configure_cpu_memory("keep")
