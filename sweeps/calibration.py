"""Measurement, not choice: the CPU training throughput the presets' time limits are checked
with (tests/test_sweeps.py), measured as docs/recipe_calibration.md says."""
from __future__ import annotations

# Calibration data (measured; how: docs/recipe_calibration.md): training tokens/s per size and
# family, plain loop, 1 thread, batch 8 x 128, BPE 512. Not used to build runs; tests check the
# presets' time limits with it.
# esolm: masked's x 0.93, the median esolm/masked ratio of bench/bench_tokens.py run side by side
# at L1-d8 ... L2-d48 (0.80-0.98; the ordered attention mask is an explicit SDPA mask).
CPU_TOKENS_PER_S: dict[str, dict[str, float]] = {
    "L1-d8": {"autoregressive": 171.1e3, "masked": 312.5e3, "uniform": 135.1e3, "hybrid": 121.5e3, "esolm": 290.6e3},
    "L1-d12": {"autoregressive": 171.9e3, "masked": 353.0e3, "uniform": 143.2e3, "hybrid": 139.7e3, "esolm": 328.3e3},
    "L1-d16": {"autoregressive": 130e3, "masked": 202.5e3, "uniform": 137.8e3, "hybrid": 132.1e3, "esolm": 188.3e3},
    "L2-d16": {"autoregressive": 95e3, "masked": 125.7e3, "uniform": 90.7e3, "hybrid": 89.8e3, "esolm": 116.9e3},
    "L2-d24": {"autoregressive": 76.3e3, "masked": 107.1e3, "uniform": 71.6e3, "hybrid": 70.2e3, "esolm": 99.6e3},
    "L2-d32": {"autoregressive": 65.2e3, "masked": 78.5e3, "uniform": 57.9e3, "hybrid": 57.7e3, "esolm": 73.0e3},
    "L2-d48": {"autoregressive": 67.3e3, "masked": 85.1e3, "uniform": 54.8e3, "hybrid": 54.2e3, "esolm": 79.1e3},
    "L2-d64": {"autoregressive": 48.9e3, "masked": 60.0e3, "uniform": 36.9e3, "hybrid": 35.9e3, "esolm": 55.8e3},
    "L3-d80": {"autoregressive": 28.1e3, "masked": 30.7e3, "uniform": 22.2e3, "hybrid": 22.3e3, "esolm": 28.6e3},
    "L3-d96": {"autoregressive": 24.1e3, "masked": 25.6e3, "uniform": 20.1e3, "hybrid": 19.6e3, "esolm": 23.8e3},
    "L4-d128": {"autoregressive": 12.4e3, "masked": 13.2e3, "uniform": 10.5e3, "hybrid": 10.5e3, "esolm": 12.3e3},
}
