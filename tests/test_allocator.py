"""keep_freed_memory: freed large tensors are reused instead of coming back as fresh pages (glibc only)."""
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from audioadv.allocator import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); sys.exit(0)

def step():                                   # a step's large temporaries, 8 to 80 MB, alive together
    ts = [torch.ones(n) for n in (2 << 20, 10 << 20, 20 << 20, 3 << 20)]

for _ in range(6):                            # the heap settles
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.strip()


def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_tensors():
    kept = faults("keep")
    if kept == "unsupported":
        pytest.skip("the C library is not glibc")
    default = int(faults("default"))
    assert default > 3 * 20000            # 35 MB of fresh 4 KB pages per step at least
    assert int(kept) < default / 50


def test_the_command_line_keeps_freed_memory(monkeypatch):
    import audioadv.cli as cli
    called = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: called.append(1))
    assert cli.main([]) == 2 and called == [1]
