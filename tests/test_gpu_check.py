"""bench/gpu_check.py on the CPU: its argument handling and, in the --cpu dry mode, the report's shape.
No GPU result is produced or faked here: the dry report says `dry: true` and names the CPU."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, clean_env


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=REPO,
                          env=clean_env(DS_ACCELERATOR="cpu"), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    ((), "--out"),
    (("--out", "/nonexistent-dir/r.json", "--cpu"), "--out: directory /nonexistent-dir"),
    (("--out", "r.json", "--cpu", "--families", "masked,nope"), "--families: 'nope'"),
    (("--out", "r.json", "--cpu", "--budget-s", "0"), "--budget-s"),
    (("--out", "r.json", "--cpu", "--data", "/nonexistent-corpus"), "--data: /nonexistent-corpus"),
])
def test_bad_arguments_exit_2_naming_the_flag(args, needle, tmp_path):
    r = _run(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr


def test_without_cuda_it_asks_for_the_dry_mode(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = _run("--out", str(tmp_path / "r.json"))
    assert r.returncode == 2 and "--cpu" in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_dry_report_has_every_section(tmp_path):
    out = tmp_path / "r.json"
    r = _run("--out", str(out), "--cpu", "--families", "autoregressive,masked")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["schema"] == 1 and d["dry"] is True and d["cuda"] is None
    assert d["peak"]["dtype"] == "float32" and d["peak"]["tflops"] > 0
    variants = {(s["variant"], s["family"], s["size"]) for s in d["steps"]}
    # plain + the engine at ZeRO-0 and ZeRO-3 (DeepSpeed is installed here), 2 sizes x 2 families
    assert len(variants) == 12 and {v for v, _, _ in variants} == {"plain", "zero0", "zero3"}
    for s in d["steps"]:
        assert s["error"] is None, s
        assert s["step_s"] > 0 and s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1
    assert [t["family"] for t in d["train"]] == ["autoregressive", "masked"]
    for t in d["train"]:
        assert t["error"] is None and t["val_nelbo"] > 0 and t["unigram_entropy"] > 0
        assert isinstance(t["below_unigram"], bool)
    steps = {(s["family"], s["steps"]) for s in d["sampling"]}
    assert ("masked", 4) in steps and any(f == "autoregressive" for f, _ in steps)
    assert all(s["tokens_per_s"] > 0 and s["nfe"] >= 1 for s in d["sampling"])
    assert d["skipped"] == [] and d["wall_s"] > 0


def test_time_budget_skips_and_still_writes(tmp_path):
    out = tmp_path / "r.json"
    r = _run("--out", str(out), "--cpu", "--families", "masked", "--budget-s", "0.001")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["peak"] is not None and d["steps"] == [] and d["train"] == []
    assert any(s.startswith("steps plain masked") for s in d["skipped"])
    assert "train masked: time budget" in d["skipped"]
