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

# Rounds of two 50 MB tensors (the replay's sampled observations of a 2s3z batch, [256, 121, 5,
# 80]: above the 32 MiB that glibc's own threshold adjustment stops at) made, written and freed;
# prints what keep_freed_memory did and the page faults of rounds 2 and later.
_FAULTS = textwrap.dedent("""
    import ctypes, resource, sys, torch
    # Transparent huge pages would fault 2 MiB at a time and hide the difference.
    ctypes.CDLL("libc.so.6").prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
    done = "default"
    if sys.argv[1] == "keep":
        from ovmse.training.allocator import keep_freed_memory
        done = keep_freed_memory()
        assert done.startswith("glibc: mmap threshold") and keep_freed_memory() == done, done
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(6):
        before = faults()
        tensors = [torch.empty(256, 121, 5, 80).fill_(1.0) for _ in range(2)]
        del tensors
        counts.append(faults() - before)
    print(done.replace(" ", "_"), sum(counts[1:]))
""")


def _faults_after_the_first_round(mode: str) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    done, faults = proc.stdout.split()[-2:]
    return done.replace("_", " "), int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    _, default = _faults_after_the_first_round("default")
    done, kept = _faults_after_the_first_round("keep")
    if done.startswith("glibc: mmap threshold 32 MiB"):
        pytest.skip(f"this glibc takes no mmap threshold above 32 MiB ({done}): 50 MB blocks stay mmapped")
    # 2 x 50 MB are about 24,000 pages: glibc's defaults mmap them afresh and fault them in on
    # every round (5 x 24,000 on rounds 2-6); kept, they are reused after a round or two.
    assert default > 60_000, default
    assert kept < default / 3, (kept, default)


def test_other_c_libraries_are_left_unchanged(monkeypatch):
    from ovmse.training import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() == "not glibc (unknown C library): unchanged"


def test_a_refused_setting_names_the_config_key(monkeypatch):
    from ovmse.training import allocator

    class Refusing:
        def mallopt(self, param, value):
            return 0

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Refusing())
    message = ("malloc_keep_freed=true: glibc's mallopt refused M_MMAP_THRESHOLD at 1024 MiB, 32 MiB; "
               "set malloc_keep_freed=false")
    with pytest.raises(ValueError, match=message):
        allocator.keep_freed_memory()


def test_malloc_keep_freed_must_be_a_boolean(compose_cfg):
    from ovmse.phases import run_phase

    cfg = compose_cfg("phase=online", "env=3m", "algo=qmix", "malloc_keep_freed=yes")
    with pytest.raises(ValueError, match=re.escape("malloc_keep_freed must be true or false, got 'yes'")):
        run_phase(cfg)
