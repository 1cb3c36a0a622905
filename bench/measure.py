"""Per-trial measurement: wall and CPU seconds, peak resident memory, peak GPU memory.

Peak resident memory is the kernel's high-water mark (VmHWM), reset at the start of each
measurement by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so each trial
reports its own peak. Where that reset is not allowed, the process-lifetime peak
(``getrusage``) is reported and ``rss_peak_is_lifetime`` says so. GPU memory is
``torch.cuda.max_memory_allocated`` after a reset of the peak statistics, recorded only
when CUDA is in use.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Measurement:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    rss_peak_is_lifetime: bool = False

    def as_attrs(self) -> dict[str, float]:
        out = {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "peak_rss_mib": self.peak_rss_mib}
        if self.peak_gpu_mib is not None:
            out["peak_gpu_mib"] = self.peak_gpu_mib
        return out


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cuda():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda
    return None


@contextmanager
def measure() -> Iterator[Measurement]:
    """Measure the enclosed block; the Measurement is filled in when the block exits."""
    m = Measurement()
    m.rss_peak_is_lifetime = not _reset_rss_peak()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield m
    finally:
        m.wall_s = time.perf_counter() - wall0
        m.cpu_s = time.process_time() - cpu0
        m.peak_rss_mib = _rss_peak_mib()
        cuda = cuda or _cuda()
        if cuda is not None:
            m.peak_gpu_mib = cuda.max_memory_allocated() / 2**20
