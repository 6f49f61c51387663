"""ovmse.training.allocator: glibc keeps freed memory for reuse (no page faults on the next
update's fresh tensors), and train.yaml's malloc_keep_freed is checked."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Rounds of four 25 MB tensors (a 2s3z update's [R, 3H] input gates) made, written and freed;
# prints the page faults of rounds 2 and later.
_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    if sys.argv[1] == "keep":
        from ovmse.training.allocator import keep_freed_memory
        assert keep_freed_memory() == "glibc" and keep_freed_memory() == "glibc"
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(6):
        before = faults()
        tensors = [torch.empty(32000, 192).fill_(1.0) for _ in range(4)]
        del tensors
        counts.append(faults() - before)
    print(sum(counts[1:]))
""")


def _faults_after_the_first_round(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _faults_after_the_first_round("default"), _faults_after_the_first_round("keep")
    # 4 x 25 MB are about 24,000 pages: glibc's defaults hand them back and fault them in again
    # on later rounds; kept, they are reused.
    assert default > 12_000, default
    assert kept < default / 4, (kept, default)


def test_other_c_libraries_are_left_unchanged(monkeypatch):
    from ovmse.training import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() == "not glibc (unknown C library): unchanged"


def test_malloc_keep_freed_must_be_a_boolean(compose_cfg):
    from ovmse.phases import run_phase

    cfg = compose_cfg("phase=online", "env=3m", "algo=qmix", "malloc_keep_freed=yes")
    with pytest.raises(ValueError, match=re.escape("malloc_keep_freed must be true or false, got 'yes'")):
        run_phase(cfg)
