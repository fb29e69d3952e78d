"""Issue 16's switches (EngineConfig.compile, .adamw, .lean): what they accept, when 'auto' compiles,
and that a job with them trains the same model as the eager path before them. Their speed is
measured in bench/bench_tokens.py, not here."""
import dataclasses

import pytest

from tests.conftest import tiny_run
from tests.test_train import history, only_run
from trainer.config import COMPILE_MIN_STEPS, EngineConfig, RunConfig
from trainer.job.train import train


@pytest.mark.parametrize("fields, needle", [
    ({"compile": "yes"}, "engine.compile must be auto|on|off"),
    ({"compile": "on", "zero_stage": 3}, "engine.compile='on' needs engine.zero_stage=0"),
    ({"adamw": "apex"}, "engine.adamw must be one of fused|foreach|loop"),
])
def test_bad_switches_name_the_field(fields, needle):
    with pytest.raises(ValueError, match=needle.replace("|", r"\|").replace("(", r"\(")):
        EngineConfig(**fields)


def test_auto_compiles_long_zero0_jobs_only():
    z0 = EngineConfig(zero_stage=0)
    assert z0.compiles(COMPILE_MIN_STEPS) and not z0.compiles(COMPILE_MIN_STEPS - 1)
    assert not EngineConfig(zero_stage=3).compiles(10**6)           # ZeRO-3 hooks the forward
    assert not dataclasses.replace(z0, compile="off").compiles(10**6)
    assert dataclasses.replace(z0, compile="on").compiles(1)
    # the switches are how a job runs, not its science: the run id does not move
    base = RunConfig()
    for fields in ({"compile": "on", "zero_stage": 0}, {"adamw": "loop"}, {"lean": False}):
        assert dataclasses.replace(base, engine=dataclasses.replace(base.engine, **fields)).run_id() \
            == base.run_id()


def _run(tmp_path, name, family, **engine):
    d = tiny_run(tmp_path / name, engine={"zero_stage": 0, "device": "cpu", **engine},
                 noise={"family": family})
    cfg = RunConfig.from_dict(d)
    res = train(cfg, progress=False)
    assert res.status == "FINISHED", res.reason
    client, run = only_run(cfg.io.tracking_uri)
    return [v for _, v in history(client, run.info.run_id)], [v for _, v in history(
        client, run.info.run_id, "train_loss")]


@pytest.mark.parametrize("family", ["masked", "uniform"])
def test_lean_and_compiled_jobs_train_the_eager_model(tmp_path, family):
    """The same run three ways: the eager path before #16 (per-parameter AdamW, DeepSpeed's clip
    and all-reduce), the lean path (fused AdamW, torch's foreach clip, no all-reduce on one rank)
    and the compiled loss. The same gradient and update up to float rounding: every validation
    NELBO and training loss agrees within 1e-3 relative (fp32, 60-odd steps of lr 3e-3 let
    rounding differences grow a little; a wrong clip, a missing all-reduce scale or a stale
    compiled graph would move them by far more)."""
    ref_val, ref_train = _run(tmp_path, "eager", family, adamw="loop", lean=False, compile="off")
    for name, eng in (("lean", dict(adamw="fused", lean=True, compile="off")),
                      ("compiled", dict(adamw="fused", lean=True, compile="on"))):
        val, tr = _run(tmp_path, name, family, **eng)
        assert len(val) == len(ref_val) and len(tr) == len(ref_train), name
        assert val == pytest.approx(ref_val, rel=1e-3), name
        assert tr == pytest.approx(ref_train, rel=1e-3), name
    assert ref_val[-1] < ref_val[0] - 0.05                 # and it learned something


def test_bench_tokens_json_is_the_only_stdout(tmp_path):
    """`python -m bench.bench_tokens --json` prints one JSON object a script can check (the bench's
    numbers are not asserted: this is a shared, noisy machine)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, clean_env
    r = subprocess.run([sys.executable, "-m", "bench.bench_tokens", "--json", "--sizes", "L1-d8",
                        "--families", "masked", "--peak-sizes", "L1-d16", "--variant-s", "0.2",
                        "--rounds", "1"], cwd=REPO, env=clean_env(DS_ACCELERATOR="cpu"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert d["cpu"] and d["peak_gflops"] > 0
    assert set(d["speedup"]) == {"8"} and d["speedup"]["8"]["masked"] > 0
    assert set(d["peak_fraction"]["16"]) == {"plain", "engine"}
    assert 0 < d["peak_fraction"]["16"]["engine"] < 1
    assert set(d["engine_ratio"]["16"]) == {"zero0", "zero3"}
