"""Sample from a finished run and print the text:

    python -m trainer.sampling.sample --run RUN_ID --steps 64 --n 16 [--out-dir runs] [--seed 0]
                             [--temperature 1.0] [--top-p 1.0] [--greedy-final] [--seq-len T]
                             [--batch-size B] [--device cpu]
                             [--sampler NAME] [--sampler-settings K=V,...]
                             [--threads N]

RUN_ID is the run's config hash (the directory name under out_dir, RunConfig.run_id(); the MLflow
tag dlm.run_id) or an unambiguous prefix of it. A run is loadable once it FINISHED: training then
writes out_dir/<run_id>/model.pt (plain fp32 state_dict) beside config.json.

Files are loaded weights-only (tensors and plain containers: a pickle cannot run code), from paths
inside the out dir the caller trusts (`confine`): run ids and MLflow tags name runs, never files.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from trainer.job import checkpoint
from trainer.config import RunConfig
from trainer.data.loader import Corpus, load_corpus
from trainer.model.transformer import Transformer
from trainer.families.base import NoiseFamily
from trainer.families.registry import build_family
from trainer.sampling.job import parse_settings
from trainer.sampling.samplers import generate
from trainer.job.train import WEIGHTS
from trainer.plan import plan


def confine(path: str | Path, root: str | Path, what: str) -> Path:
    """`path` resolved (symlinks followed) if it lies inside the out dir `root`, else a ValueError
    naming `what` and both paths. `root` is the one directory the caller trusts (the --out-dir it was
    given); names read from elsewhere (MLflow tags and params, run-id prefixes) must stay inside it."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if not p.is_relative_to(r):
        raise ValueError(f"{what} {p} is outside the out dir {r}: refusing to read it (runs are "
                         "loaded only from the out dir given, --out-dir)")
    return p


def find_run(out_dir: str | Path, run: str) -> Path:
    """out_dir/<run_id> for a run id or an unambiguous prefix of one."""
    root = Path(out_dir)
    if "/" in run or os.sep in run or run in (".", ".."):
        raise ValueError(f"run {run!r}: a run id or a prefix of one, not a path")
    if (root / run / "config.json").is_file():
        confine(root / run, root, f"run {run}")
        return root / run
    hits = sorted(p for p in root.glob(f"{run}*") if (p / "config.json").is_file()) if run else []
    if len(hits) != 1:
        what = "no run" if not hits else f"{len(hits)} runs ({', '.join(p.name for p in hits)})"
        raise ValueError(f"{what} under {root} match {run!r}")
    confine(hits[0], root, f"run {hits[0].name}")           # e.g. a symlink out of the out dir
    return hits[0]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[Transformer, NoiseFamily, RunConfig, Corpus]:
    """(model in eval mode on `device`, its noise family, its config, its corpus) of a finished run
    directory out_dir/<run_id>, from config.json and model.pt."""
    run_dir = Path(run_dir)
    config, weights = run_dir / "config.json", run_dir / WEIGHTS
    if not config.is_file():
        raise FileNotFoundError(f"run {run_dir.name} has no config.json ({config})")
    cfg = RunConfig.from_dict(json.loads(config.read_text()))
    state = _load_tensors(weights, deepspeed=False) if weights.is_file() else None  # before the corpus
    corpus = load_corpus(cfg.data)
    p = plan(cfg, corpus.vocab_size)
    if state is None:
        state = weights_from_checkpoint(run_dir, p.steps)
    model = Transformer(p.model_cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), build_family(cfg.noise, corpus.vocab_size, corpus.eot_id), cfg, corpus


def has_weights(run_dir: str | Path) -> bool:
    """Whether load_run can load this run: model.pt, or a final checkpoint of a finished run."""
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS).is_file():
        return True
    config = run_dir / "config.json"
    if not config.is_file():
        return False
    cfg = RunConfig.from_dict(json.loads(config.read_text()))
    steps = plan(cfg, cfg.data.vocab_size).steps
    root = checkpoint.ckpt_root(str(run_dir.parent), run_dir.name)
    return any(json.loads((root / t / checkpoint.STATE).read_text())["step"] == steps
               for t in checkpoint.complete_tags(root))


def weights_from_checkpoint(run_dir: Path, steps: int) -> dict[str, torch.Tensor]:
    """The fp32 state_dict of a run's *final* DeepSpeed checkpoint (step == `steps`), for runs that
    finished before training exported model.pt. ZeRO-3 shards are merged by DeepSpeed's
    zero_to_fp32; otherwise the module states are read from mp_rank_00_model_states.pt. Both are
    read weights-only (see `_weights_only_loads`)."""
    root = checkpoint.ckpt_root(str(run_dir.parent), run_dir.name)
    tags = checkpoint.complete_tags(root)
    final = [t for t in tags if json.loads((root / t / checkpoint.STATE).read_text())["step"] == steps]
    if not final:
        raise FileNotFoundError(f"run {run_dir.name} has no {WEIGHTS} and no final checkpoint (step "
                                f"{steps}) under {root}: it has not finished")
    tag = root / final[0]
    if not (tag / "mp_rank_00_model_states.pt").is_file():            # ZeRO-3: per-rank shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        try:
            with _weights_only_loads(deepspeed=True):
                return get_fp32_state_dict_from_zero_checkpoint(str(root), final[0])
        except pickle.UnpicklingError as exc:
            raise ValueError(_refused(tag, exc)) from None
    states = _load_tensors(tag / "mp_rank_00_model_states.pt", deepspeed=True)
    return {k: v.float() for k, v in states["module"].items()}


def _refused(path: Path, exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
    return (f"{path} holds more than tensors (refusing to unpickle it: a pickle can run code); "
            f"torch: {said[:300]}")


def _load_tensors(path: Path, deepspeed: bool) -> dict:
    """torch.load weights-only, with a clear error for a file that needs more than tensors."""
    try:
        with _weights_only_loads(deepspeed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(_refused(path, exc)) from None


# torch.serialization.load reads this per call and then loads weights-only even where the caller
# passed weights_only=False, as DeepSpeed's zero_to_fp32 (parse_model_states/parse_optim_states) does.
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextmanager
def _weights_only_loads(deepspeed: bool):
    """Every torch.load inside runs weights-only. Beyond tensors and containers a DeepSpeed ZeRO
    checkpoint holds exactly two DeepSpeed classes (torch.serialization.get_unsafe_globals_in_checkpoint
    on a ZeRO-3 optim_states file: ZeroStageEnum, an IntEnum, and LossScaler, plain attributes);
    with `deepspeed` they are allow-listed, as data: the weights-only unpickler builds them without
    calling anything else. model.pt needs neither (and no DeepSpeed import)."""
    allowed = []
    if deepspeed:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        allowed = [ZeroStageEnum, LossScaler]
    before = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run id (config hash) or an unambiguous prefix")
    ap.add_argument("--out-dir", default=RunConfig().io.out_dir, help="checkpoint root (io.out_dir)")
    ap.add_argument("--steps", type=int, default=64, help="denoising steps (ignored for AR)")
    ap.add_argument("--n", type=int, default=16, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = no truncation)")
    ap.add_argument("--greedy-final", action="store_true",
                    help="diffusion: the last denoising step takes each position's argmax")
    ap.add_argument("--sampler", default=None,
                    help="one of the family's samplers by name (default: its own), e.g. masked-remdm")
    ap.add_argument("--sampler-settings", default="",
                    help="its settings, KEY=VALUE,... (masked-remdm: schedule=cap|rescale|loop, eta, "
                         "t_on, t_off, alpha_on)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default: training's)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: n)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = parse_settings(args.sampler_settings)
        model, family, cfg, corpus = load_run(find_run(args.out_dir, args.run), args.device)
        res = generate(model, family, n=args.n, seq_len=args.seq_len or cfg.train.seq_len,
                       steps=args.steps, seed=args.seed, temperature=args.temperature,
                       top_p=args.top_p, greedy_final=args.greedy_final, sampler=args.sampler,
                       sampler_settings=settings,
                       device=args.device, batch_size=args.batch_size, start_id=corpus.eot_id)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {cfg.run_id()} family {family.name} size {cfg.size} sampler {res.sampler} "
          f"steps {res.steps} "
          f"nfe {res.nfe} n {args.n} seq_len {res.tokens.shape[1]} "
          f"{res.tokens_per_s():,.0f} tokens/s ({res.seconds:.2f} s)")
    for i, row in enumerate(res.tokens.tolist()):
        print(f"--- sample {i} ---\n{corpus.decode(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
