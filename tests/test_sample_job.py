"""The sampling job (trainer/sampling/job.py), without Ray: what it returns is what the driver logs,
keyed by the schema's sampling metrics."""
from __future__ import annotations

import math

import pytest

from core import schema as M
from tests.conftest import tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainer.config import RunConfig
    from trainer.job.train import train
    tmp = tmp_path_factory.mktemp("sample_job")
    dirs = {}
    for family in ("masked", "autoregressive"):
        cfg = RunConfig.from_dict(tiny_run(tmp, noise={"family": family}))
        assert train(cfg, progress=False).status == "FINISHED"
        dirs[family] = tmp / "runs" / cfg.run_id()
    return dirs, cfg.train.seq_len


@pytest.mark.parametrize("family", ["masked", "autoregressive"])
def test_sample_job_returns_one_point_per_step_count_keyed_by_the_schema(trained, family):
    from trainer.sampling.job import Job, sample_job
    dirs, seq_len = trained
    job = Job("mlflow-id", str(dirs[family]), str(dirs["autoregressive"]), steps=(2, 8), n=2, seed=0,
              temperature=1.0, threads=1, repeats=1)
    res = sample_job(job)
    assert res["source_run"] == "mlflow-id" and res["seq_len"] == seq_len and res["sampler"]
    steps = [p["steps"] for p in res["points"]]
    assert steps == ([seq_len] if family == "autoregressive" else [2, 8])   # AR: once, KV cache
    for p in res["points"]:
        assert set(M.SAMPLING_METRICS) <= set(p) and isinstance(p["example"], str)
        assert p[M.METRIC_TOKENS_PER_S] > 0 and 1.0 < p[M.METRIC_GEN_PPL] < math.inf
        assert 0 < p[M.METRIC_ENTROPY] <= math.log(seq_len) + 1e-9 and p[M.METRIC_NFE] >= 1


def test_ref_entropy_is_that_of_real_text(trained):
    from trainer.sampling.job import ref_entropy
    dirs, seq_len = trained
    assert 0 < ref_entropy(dirs["autoregressive"], 4) <= math.log(seq_len)


def test_sample_job_names_its_draw_settings(trained):
    from orchestrator.sampling import settings_key
    from trainer.sampling.job import Job, sample_job
    dirs, _ = trained
    base = Job("mlflow-id", str(dirs["masked"]), str(dirs["autoregressive"]), steps=(4,), n=2,
               seed=0, temperature=1.0, threads=1, repeats=1)
    nucleus = Job(**{**base.__dict__, "top_p": 0.9, "greedy_final": True})
    assert sample_job(base)["sampler"] == "masked-ancestral-cached"
    assert sample_job(nucleus)["sampler"] == "masked-ancestral-cached[top_p=0.9,greedy_final]"
    # another draw is another measurement: a re-run does not mistake one for the other
    assert settings_key(base, "judge") != settings_key(nucleus, "judge")


def test_sample_job_names_its_sampler_and_settings(trained):
    from orchestrator.sampling import sampler_choice, settings_key
    from trainer.sampling.job import Job, parse_settings, sample_job
    dirs, _ = trained
    base = Job("mlflow-id", str(dirs["masked"]), str(dirs["autoregressive"]), steps=(4,), n=2,
               seed=0, temperature=1.0, threads=1, repeats=1)
    offer = sampler_choice("masked-remdm", parse_settings("schedule=rescale, eta=0.5"))
    assert set(offer) == {"masked"}
    name, settings = offer["masked"]
    assert name == "masked-remdm" and settings["schedule"] == "rescale" and settings["eta"] == 0.5
    remdm = Job(**{**base.__dict__, "sampler": name, "sampler_settings": settings, "top_p": 0.9})
    res = sample_job(remdm)
    assert res["sampler"] == "masked-remdm[rescale,eta=0.5,top_p=0.9]"
    assert res["sampler_name"] == "masked-remdm" and res["sampler_settings"] == settings
    assert sample_job(base)["sampler_settings"] == {}
    keys = {settings_key(j, "judge") for j in (base, remdm, Job(**{**remdm.__dict__, "top_p": 1.0}))}
    assert len(keys) == 3
    # the family's default sampler, named or not, is the earlier measurement: the same key
    assert sampler_choice("masked-ancestral-cached", {}) == {"masked": (None, {})}
    assert sampler_choice(None, {}) is None
    assert sampler_choice("masked-remdm", {}) == {"masked": ("masked-remdm", {
        "schedule": "cap", "eta": 0.008, "t_on": 0.55, "t_off": 0.05, "alpha_on": 0.9})}
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_settings("eta")
