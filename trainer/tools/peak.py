"""Measured matmul peak (FLOP/s) of this process's device: the denominator of MFU.

Measured, not looked up: a square matmul timed (best of six 0.1 s windows) at the run's dtype and threads,
cached per (host, device, dtype, threads) under the project cache so trials don't re-measure.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import torch

from core.paths import REPO_ROOT

CACHE = Path(os.environ.get("DLM_CACHE_DIR", REPO_ROOT / ".cache")) / "peak_flops.json"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), printed by every bench beside its measured peak."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(device: torch.device, dtype: torch.dtype, n: int = 1024, windows: int = 6,
            seconds: float = 0.1) -> float:
    """Best of several short timing windows: other processes on a shared machine can only slow a
    window down, so the fastest one is the closest to the device's peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, threads: int) -> float:
    key = f"{socket.gethostname()}|{device}|{dtype}|{threads if device.type == 'cpu' else 0}"
    try:
        table = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure(device, dtype)
        try:
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, CACHE)
        except OSError:
            pass
    return table[key]
