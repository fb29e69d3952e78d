"""Sample from a finished run and print the text:

    python -m trainer.sample --run RUN_ID --steps 64 --n 16 [--out-dir runs] [--seed 0]
                             [--temperature 1.0] [--seq-len T] [--batch-size B] [--device cpu]
                             [--threads N]

RUN_ID is the run's config hash (the directory name under out_dir, RunConfig.run_id(); the MLflow
tag dlm.run_id) or an unambiguous prefix of it. A run is loadable once it FINISHED: training then
writes out_dir/<run_id>/model.pt (plain fp32 state_dict) beside config.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from trainer import checkpoint
from trainer.config import RunConfig
from trainer.data import Corpus, load_corpus
from trainer.model import Transformer
from trainer.noise import NoiseFamily, build_family
from trainer.sampling import generate
from trainer.train import WEIGHTS, plan


def find_run(out_dir: str | Path, run: str) -> Path:
    """out_dir/<run_id> for a run id or an unambiguous prefix of one."""
    root = Path(out_dir)
    if (root / run / "config.json").is_file():
        return root / run
    hits = sorted(p for p in root.glob(f"{run}*") if (p / "config.json").is_file()) if run else []
    if len(hits) != 1:
        what = "no run" if not hits else f"{len(hits)} runs ({', '.join(p.name for p in hits)})"
        raise ValueError(f"{what} under {root} match {run!r}")
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
    corpus = load_corpus(cfg.data)
    p = plan(cfg, corpus.vocab_size)
    if weights.is_file():
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        state = weights_from_checkpoint(run_dir, p.steps)
    model = Transformer(p.model_cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), build_family(cfg.noise, corpus.vocab_size), cfg, corpus


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
    zero_to_fp32; otherwise the module states are read from mp_rank_00_model_states.pt. These files
    pickle DeepSpeed objects (weights_only=False): only read checkpoints this project wrote."""
    root = checkpoint.ckpt_root(str(run_dir.parent), run_dir.name)
    tags = checkpoint.complete_tags(root)
    final = [t for t in tags if json.loads((root / t / checkpoint.STATE).read_text())["step"] == steps]
    if not final:
        raise FileNotFoundError(f"run {run_dir.name} has no {WEIGHTS} and no final checkpoint (step "
                                f"{steps}) under {root}: it has not finished")
    tag = root / final[0]
    if not (tag / "mp_rank_00_model_states.pt").is_file():            # ZeRO-3: per-rank shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        return get_fp32_state_dict_from_zero_checkpoint(str(root), final[0])
    states = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run id (config hash) or an unambiguous prefix")
    ap.add_argument("--out-dir", default=RunConfig().io.out_dir, help="checkpoint root (io.out_dir)")
    ap.add_argument("--steps", type=int, default=64, help="denoising steps (ignored for AR)")
    ap.add_argument("--n", type=int, default=16, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default: training's)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: n)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, family, cfg, corpus = load_run(find_run(args.out_dir, args.run), args.device)
        res = generate(model, family, n=args.n, seq_len=args.seq_len or cfg.train.seq_len,
                       steps=args.steps, seed=args.seed, temperature=args.temperature,
                       device=args.device, batch_size=args.batch_size, start_id=corpus.eot_id)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {cfg.run_id()} family {family.name} size {cfg.size} steps {res.steps} "
          f"nfe {res.nfe} n {args.n} seq_len {res.tokens.shape[1]} "
          f"{res.tokens_per_s():,.0f} tokens/s ({res.seconds:.2f} s)")
    for i, row in enumerate(res.tokens.tolist()):
        print(f"--- sample {i} ---\n{corpus.decode(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
