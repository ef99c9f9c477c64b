"""cpu_memory=reuse: freed tensor memory stays in the process, so a training step does not fault
its pages back in from the kernel every time (see src/adalfl/cpu_memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adalfl.cpu_memory import configure_cpu_memory

# Ten training steps of a two-layer CNN (8 MiB activations); count the minor page faults.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from adalfl.cpu_memory import configure_cpu_memory
    torch.set_num_threads(1)
    print(configure_cpu_memory(sys.argv[1]))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(64, 3, 32, 32)
    for _ in range(3):
        net(x).sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net(x).sum().backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")



def _faults(setting: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_stops_page_faults_on_repeated_allocations() -> None:
    applied, reuse = _faults("reuse")
    assert applied == "True"
    _, system = _faults("system")
    activation_pages = 64 * 32 * 32 * 32 * 4 // 4096  # the first conv's output, 2048 pages
    # glibc's default: freed blocks go back to the kernel, about two activations a step (measured 40k)
    assert system > 8 * activation_pages
    # reused: no fresh pages, or once one activation's worth when the heap grows (measured 0 to 2050)
    assert reuse < 2 * activation_pages


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_memory"):
        configure_cpu_memory("keep")
