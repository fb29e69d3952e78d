"""Sampling trusts no MLflow data (issue 11, item 9): MLflow tags and params name runs, never files
(every path is confined to the --out-dir the sampling stage was given), and weights and checkpoints
load weights-only, so a pickle cannot run code. A few seconds plus one sqlite store."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_run


class Payload:
    """A pickle that runs code when unpickled (weights_only=False): it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def evil_file(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": {"w": torch.zeros(1)}, "x": Payload(marker)}, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The negative control of the two tests below: an unrestricted torch.load runs it."""
    torch.load(evil_file(tmp_path / "p.pt", tmp_path / "ran"), weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("where", ["model.pt", "zero0", "zero3"])
def test_load_run_never_unpickles_code(tmp_path, where):
    """model.pt, a ZeRO-0/1/2 model-states file and a ZeRO-3 shard (DeepSpeed's zero_to_fp32
    passes weights_only=False itself) are all refused, by file name, without running the payload."""
    from trainer.config import RunConfig
    from trainer.sampling.sample import load_run
    from trainer.plan import plan
    cfg = RunConfig.from_dict(tiny_run(tmp_path))
    run_dir = tmp_path / "runs" / cfg.run_id()
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    marker = tmp_path / "ran"
    if where == "model.pt":
        bad = evil_file(run_dir / "model.pt", marker)
    else:
        tag = run_dir / "ckpt" / "step00000001"
        name = {"zero0": "mp_rank_00_model_states.pt", "zero3": "zero_pp_rank_0_mp_rank_00_model_states.pt"}
        bad = evil_file(tag / name[where], marker)
        if where == "zero3":
            evil_file(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
        steps = plan(cfg, cfg.data.vocab_size).steps
        (tag / "state.json").write_text(json.dumps({"step": steps}))
    with pytest.raises(ValueError, match="refusing to unpickle") as err:
        load_run(run_dir)
    assert str(bad.parent if where == "zero3" else bad) in str(err.value)   # zero3: the tag merged
    assert "io.open" in str(err.value)                             # what it would have called
    assert not marker.exists()


CASES = ["pickle", "passwd", "run_id", "symlink"]


@pytest.fixture(scope="module")
def untrusted_store(tmp_path_factory):
    """One sqlite store (creating one costs ~10 s here), one experiment per case, each with one
    FINISHED trial whose tags point out of `out`; a pickle that would run code sits outside it."""
    from mlflow.tracking import MlflowClient
    tmp = tmp_path_factory.mktemp("untrusted")
    out, marker = tmp / "runs", tmp / "ran"
    out.mkdir()
    evil = evil_file(tmp / "elsewhere" / "0123456789abcdef" / "model.pt", marker)
    (out / "0123456789abcdef").symlink_to(evil.parent)            # a run dir in out leading out
    tags = {"pickle": {"dlm.weights": str(evil)}, "passwd": {"dlm.weights": "/etc/passwd"},
            "run_id": {"dlm.run_id": "../elsewhere/0123456789abcdef"},
            "symlink": {"dlm.weights": str(out / "0123456789abcdef" / "model.pt")}}
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, ids = MlflowClient(uri), {}
    for case in CASES:
        run = client.create_run(client.create_experiment(case), tags={
            "dlm.role": "trial", "dlm.family": "autoregressive", "dlm.size": "L2-d24", **tags[case]})
        client.log_param(run.info.run_id, "io.out_dir", str(tmp / "elsewhere"))
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[case] = run.info.run_id
    return SimpleNamespace(uri=uri, out=out, marker=marker, evil=evil, ids=ids)


@pytest.mark.parametrize("case", CASES)
def test_sampling_stage_refuses_paths_outside_its_out_dir(untrusted_store, capsys, case):
    """A trial whose MLflow tags point outside --out-dir (a pickle that would run code, /etc/passwd,
    a dlm.run_id climbing out, a symlink in the out dir leading out) stops the stage before Ray
    starts: exit 2, the run and the path named, nothing read."""
    from orchestrator import sampling
    st = untrusted_store
    code = sampling.main([case, "--tracking-uri", st.uri, "--out-dir", str(st.out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"trial {st.ids[case]}" in err and "is outside the out dir" in err and str(st.out) in err
    assert ("/etc/passwd" if case == "passwd" else str(st.evil.parent)) in err
    assert "io.out_dir=" in err                                    # what to pass if it is trusted
    assert not st.marker.exists()
    assert "Started a local Ray" not in err
