"""`python -m core.flops`: one shape's FLOP and parameter counts under a named convention.

    python -m core.flops --n-layer 12 --d-model 768 --n-head 12 --vocab 32001 --seq-len 2048 \
        --mlp gelu --convention sahoo2026 --json

prints a JSON object: the convention and its source, `flops_per_token` (training, forward +
backward), `forward_flops_per_token`, `forward_flops_per_sequence` (seq_len tokens), the parameter
counts (`n_nonembed`: the backbone N that laws are fitted on, no embedding, head or time
conditioning; `n_time_cond`; `n_total`) and `flops_per_token_by_convention` (every convention).
Torch-free: the shape is a small dataclass read by attribute, like ModelConfig.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from core import flops
from core.ladder import COND_DIM, MLP_HIDDEN, TIME_CONDS

@dataclass(frozen=True, kw_only=True)
class Shape:
    """The fields of ModelConfig that the FLOP and parameter counts read."""

    n_layer: int  # transformer blocks (count)
    d_model: int  # residual width (features)
    n_head: int  # attention heads (count)
    vocab_size: int  # input embedding rows (tokens)
    out_vocab_size: int  # output classes (tokens)
    seq_len: int  # tokens per sequence
    mlp: str = "gelu"  # a key of flops.MLP_MATRICES
    hidden: int  # MLP hidden width (features)
    time_cond: str = "none"  # a key of core.ladder.TIME_CONDS
    cond_dim: int = COND_DIM  # condition width of "adaln" (features)

    def mlp_hidden(self) -> int:
        return self.hidden


def default_mlp_hidden(mlp: str, d_model: int, mlp_ratio: float = 4.0) -> int:
    """The model's MLP hidden width for a kind, width and ratio (core.ladder.MLP_HIDDEN's rule)."""
    return MLP_HIDDEN[mlp](d_model, mlp_ratio)


def report(shape: Shape, convention: str) -> dict[str, object]:
    """The JSON object the CLI prints for one shape and convention."""
    per_token = flops.train_flops_per_token(shape, convention)
    forward = per_token / flops.TRAIN_OVER_FORWARD
    counts = flops.param_counts(shape)
    return {
        "convention": convention,
        "source": flops.CONVENTIONS[convention].source,
        "flops_per_token": per_token,
        "forward_flops_per_token": forward,
        "forward_flops_per_sequence": forward * shape.seq_len,
        "n_nonembed": counts.backbone,
        "n_time_cond": counts.time_cond,
        "n_nonembed_incl_time_cond": counts.nonembed,
        "n_total": counts.total,
        "flops_per_token_by_convention": flops.flops_per_token_by_convention(shape),
        "shape": asdict(shape),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m core.flops", description=__doc__.split("\n")[0])
    p.add_argument("--n-layer", type=int, required=True)
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--n-head", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True, help="output classes (the head's width)")
    p.add_argument("--vocab-in", type=int, help="input embedding rows (default: --vocab)")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--mlp", choices=sorted(flops.MLP_MATRICES), default="gelu")
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--mlp-hidden", type=int, help="MLP hidden width (default: the model's rule)")
    p.add_argument("--time-cond", choices=sorted(TIME_CONDS), default="none",
                   help="time conditioning (counted in n_time_cond, once per sequence in FLOPs)")
    p.add_argument("--cond-dim", type=int, default=COND_DIM, help="condition width of adaln")
    p.add_argument("--convention", choices=sorted(flops.CONVENTIONS), default="matmul")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for name in ("n_layer", "d_model", "n_head", "vocab", "seq_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int")
    shape = Shape(
        n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
        vocab_size=args.vocab_in or args.vocab, out_vocab_size=args.vocab, seq_len=args.seq_len,
        mlp=args.mlp, time_cond=args.time_cond, cond_dim=args.cond_dim,
        hidden=args.mlp_hidden or default_mlp_hidden(args.mlp, args.d_model, args.mlp_ratio),
    )
    out = report(shape, args.convention)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for key, value in out.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:18s} {v:.6g}" if isinstance(v, float) else f"  {k:18s} {v}")
        else:
            print(f"{key:28s} {value:.6g}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    main()
