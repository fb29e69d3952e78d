"""`python -m trainer.data.cli` (`make data`): build (or find) a token cache and print its table.

    python -m trainer.data.cli --paths /shared/corpus --tokenizer /models/tinyllama/tokenizer.model \
        --build ray --vocab-size 32768
"""
from __future__ import annotations

import logging
import math

from trainer.data.corpus import SOURCES
from trainer.data.loader import Corpus, DataConfig, load_corpus



def format_table(corpus: Corpus) -> str:
    """Per-source and per-split documents / characters / tokens, then the summary numbers."""
    splits = corpus.meta["splits"]
    names = sorted({*splits["train"]["sources"], *splits["val"]["sources"]})
    cols = ("documents", "characters", "tokens", "bytes/tok")
    head = f"{'source':<24}{'split':<7}" + "".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    empty = {"documents": 0, "characters": 0, "bytes": 0, "tokens": 0}
    for name in [*names, "TOTAL"]:
        for split in ("train", "val"):
            s = (
                splits[split]["total"]
                if name == "TOTAL"
                else splits[split]["sources"].get(name, empty)
            )
            bpt = s["bytes"] / s["tokens"] if s["tokens"] else float("nan")
            counts = "".join(f"{s[k]:>12,}" for k in ("documents", "characters", "tokens"))
            lines.append(f"{name:<24}{split:<7}{counts}{bpt:>12.3f}")
    n_val, n_train = (splits[k]["total"]["tokens"] for k in ("val", "train"))
    val_share = n_val / (n_val + n_train)
    h = corpus.unigram_entropy("val")
    build_s = corpus.meta["load_seconds"] + corpus.meta["build_seconds"]
    lines += [
        "",
        f"vocab size {corpus.vocab_size} (eot id {corpus.eot_id}), dtype {corpus.meta['dtype']}",
        f"stream tokens (EOTs included): train {len(corpus.train):,}, val {len(corpus.val):,}; "
        f"val share of text tokens {val_share:.2%}",
        f"bytes/token: train {splits['train']['total']['bytes_per_token']:.3f}, "
        f"val {splits['val']['total']['bytes_per_token']:.3f}",
        f"val unigram entropy: {h:.4f} nats/token = {h / math.log(2):.4f} bits/token",
        f"built {corpus.meta['built_at']} in {build_s:.1f} s",
        f"cache: {corpus.path}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Build (or load) the token cache and print its table."
    )
    parser.add_argument("--vocab-size", type=int, default=DataConfig.vocab_size)
    parser.add_argument(
        "--paths", nargs="+", default=[], help="user .txt/.md files, directories, .parquet"
    )
    parser.add_argument("--text-column", default=DataConfig.text_column)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--sources", nargs="+", default=list(DataConfig.sources), choices=sorted(SOURCES)
    )
    parser.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    parser.add_argument("--tokenizer", default=DataConfig.tokenizer,
                        help="'bpe' (train one) or a tokenizer.json / SentencePiece .model / GPT-2 encoder.json")
    parser.add_argument("--eot-token", default=None)
    parser.add_argument("--tokenizer-sample-chars", type=int, default=DataConfig.tokenizer_sample_chars)
    parser.add_argument("--shard-tokens", type=int, default=DataConfig.shard_tokens)
    parser.add_argument("--build", default=DataConfig.build, choices=("auto", "local", "ray"))
    parser.add_argument("--verify", action="store_true", help="re-hash every shard against the index")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = DataConfig(
        sources=tuple(args.sources),
        paths=tuple(args.paths),
        text_column=args.text_column,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        cache_dir=args.cache_dir,
        tokenizer=args.tokenizer,
        eot_token=args.eot_token,
        tokenizer_sample_chars=args.tokenizer_sample_chars,
        shard_tokens=args.shard_tokens,
        build=args.build,
    )
    corpus = load_corpus(cfg)
    if args.verify:
        corpus.train.verify()
        corpus.val.verify()
    print(format_table(corpus))


if __name__ == "__main__":
    main()


