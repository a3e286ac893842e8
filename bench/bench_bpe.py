"""Speed of spine's from-scratch BPETokenizer vs tiktoken (GPT-2 merges), plus BPE training.

    python bench/bench_bpe.py                       # the-verdict, encode/decode
    python bench/bench_bpe.py --train-vocab 2000 --train-file A --train-file B ...

Prints markdown table rows (copy them into bench/RESULTS.md). Timings are the best of
`--repeat` runs, single thread. "cold" = fresh word cache, "warm" = second pass over the text.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from spine.bpe import BPETokenizer
from spine.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("SPINE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    data = _shared_data()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=data / "the-verdict" / "the-verdict.txt")
    ap.add_argument("--vocab-dir", type=Path, default=data / "gpt2-bpe")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train-file", type=Path, action="append", default=[], help="text files to train BPE on")
    ap.add_argument("--train-vocab", type=int, default=2000)
    args = ap.parse_args()

    text = args.text.read_text(encoding="utf-8")
    nbytes = len(text.encode())
    tk = get_tokenizer("gpt2", vocab_dir=args.vocab_dir)
    t_load, bpe = _best(lambda: BPETokenizer.from_gpt2_files(args.vocab_dir / "encoder.json", args.vocab_dir / "vocab.bpe"), 1)

    def cold():
        bpe._cache.clear()
        return bpe.encode(text)

    t_cold, ids = _best(cold, args.repeat)
    t_warm, ids_warm = _best(lambda: bpe.encode(text), args.repeat)
    t_tk, ref = _best(lambda: tk.encoding.encode_ordinary(text), args.repeat)
    t_dec_bpe, dec = _best(lambda: bpe.decode(ids), args.repeat)
    t_dec_tk, _ = _best(lambda: tk.decode(ref), args.repeat)
    same = ids == ref == ids_warm and dec == text

    print(f"<!-- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()} -->")
    print("| text | bytes | tokens | identical ids | BPE load s | BPE encode cold ms | BPE encode warm ms | "
          "tiktoken encode ms | cold / tiktoken | BPE decode ms | tiktoken decode ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.text.name} | {nbytes:,} | {len(ref):,} | {'yes' if same else 'NO'} | {t_load:.2f} | "
          f"{t_cold * 1e3:.1f} | {t_warm * 1e3:.1f} | {t_tk * 1e3:.2f} | {t_cold / t_tk:.0f}x | "
          f"{t_dec_bpe * 1e3:.2f} | {t_dec_tk * 1e3:.2f} |")

    if args.train_file:
        corpus = [p.read_text(encoding="utf-8", errors="replace") for p in args.train_file]
        mb = sum(len(c.encode()) for c in corpus) / 1e6
        t0 = time.perf_counter()
        trained = BPETokenizer.train(corpus, vocab_size=args.train_vocab)
        t_train = time.perf_counter() - t0
        t_enc, tids = _best(lambda: trained.encode(text), 1)
        print()
        print("| training corpus | MB | requested vocab | reached vocab | train s | verdict tokens (trained) | bytes/token |")
        print("|---|---|---|---|---|---|---|")
        names = "+".join(p.name for p in args.train_file)
        print(f"| {names} | {mb:.2f} | {args.train_vocab} | {trained.vocab_size} | {t_train:.1f} | "
              f"{len(tids):,} | {nbytes / len(tids):.2f} |")


if __name__ == "__main__":
    main()
