"""Everything a sweep can know before Ray starts, it checks before Ray starts: exit 2 and a message
naming the field, from `orchestrator.cli.main` in-process with Ray's start replaced by a failure
(so a check that slipped would fail loudly instead of running a sweep). What only the cluster knows
(does a trial fit it?) is checked after Ray starts and before any trial: a real embedded cluster."""
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, clean_env

PRE_RAY = [
    (["--set", "train.weight_decay=abc"], "train.weight_decay must be a float"),
    (["--set", "train.lr=NaN"], "train.lr must be finite"),
    (["--set", "train.lr=Infinity"], "train.lr must be finite"),
    (["--set", "train.grad_clip=NaN"], "train.grad_clip must be finite"),
    (["--set", "io.ckpt_every_min=NaN"], "io.ckpt_every_min must be finite"),
    (["--set", "train.seed=-1"], "train.seed must be a non-negative integer"),
    (["--set", "train.seed=1.5"], "train.seed must be an int"),
    (["--set", "engine.threads=true"], "engine.threads must be an int"),
    (["--set", "train.eval_seqs=100000"], "train.eval_seqs=100000"),
    (["--set", "train.data_pool_tokens=1000000000"], "train.data_pool_tokens=1000000000"),
    (["--set", 'data.paths=["/nonexistent/x.txt"]'], "/nonexistent/x.txt"),
    (["--max-retries", "-1"], "--max-retries"),
    (["--budgets", ""], "--budgets"),
    (["--sizes", ""], "--sizes"),
    (["--num-cpus", "0"], "--num-cpus"),
]


@pytest.mark.parametrize("args,needle", PRE_RAY, ids=[" ".join(a) for a, _ in PRE_RAY])
def test_bad_input_is_rejected_before_ray_starts(tmp_path, monkeypatch, capsys, args, needle):
    from orchestrator import cli, runner

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for bad input")
    monkeypatch.setattr(runner, "connect", no_ray)
    argv = ["smoke", *args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--out-dir", str(tmp_path / "runs")]
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exc:                  # argparse's own errors: exit 2 with the usage line
        code = exc.code
    seconds = time.perf_counter() - t0
    out = capsys.readouterr()
    assert code == 2, out.out[-2000:] + out.err[-2000:]
    assert needle in out.err, out.err
    assert "to run" not in out.out and not (tmp_path / "mlflow.db").exists()
    # No time bound: "before Ray" is what `no_ray` and the two lines above assert. A wall-clock
    # bound failed on a fresh clone, where the first corpus check builds the cache (13 s here).
    print(f"{seconds:.2f} s: {out.err.strip().splitlines()[-1]}")


# each starts a real Ray: 11 s on the AVX2 machine alone, ~30 s under load
@pytest.mark.parametrize("args,needle", [
    (["--num-cpus", "2", "--set", "engine.threads=4"], "engine.threads"),
    (["--set", 'engine.device="cuda"'], "engine.device"),
])
def test_trial_that_cannot_fit_the_cluster_is_rejected_before_any_trial(tmp_path, args, needle):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "smoke", *args, "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--out-dir", str(tmp_path / "runs")],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=180,
                          start_new_session=True)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert needle in proc.stderr and "cluster: CPU=" in proc.stderr, proc.stderr[-2000:]
    assert "to run" not in proc.stdout and not (tmp_path / "mlflow.db").exists()
    print(f"{time.perf_counter() - t0:.0f} s: {proc.stderr.strip().splitlines()[-1]}")
