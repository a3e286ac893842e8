"""Data preparation on the CPU: the pretraining data module's tokenize-and-cache vs raw tiktoken.

Both tokenize the same documents with GPT-2 BPE. "raw" is tiktoken's `encode_ordinary_batch` on all
documents (threads = cores); "spine" is `PretrainDataModule.prepare_data()` from a text file: read,
split, tokenize (tiktoken's threaded batch), insert end-of-text, write the uint16 memmap cache
atomically. Building the GPT-2 encoding from encoder.json/vocab.bpe (~0.5 s) is outside both timings. Median of --reps runs each, cache cleared between spine runs.

    python bench/data_prep.py --vocab_dir ../shared/data/gpt2-bpe --mb 20
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.reasoning.synthetic import make_documents  # noqa: E402
from spine.tokenizer import get_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab_dir", default="../shared/data/gpt2-bpe")
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size in MB")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from datamodules.pretrain import PretrainDataModule

    tok = get_tokenizer("gpt2", vocab_dir=args.vocab_dir)
    # documents: the shared data's text files if present, else the synthetic corpus, repeated to size
    shared = Path(args.vocab_dir).resolve().parent
    docs = []
    for name in ["the-verdict/the-verdict.txt", "sms-spam/SMSSpamCollection", "instruction-ft/instruction-data.json",
                 "dpo-preference/instruction-data-with-preference.json"]:
        p = shared / name
        if p.exists():
            docs.append(p.read_text(encoding="utf-8"))
    if not docs:
        docs = make_documents(20000)
    base = sum(len(d.encode()) for d in docs)
    docs = docs * max(1, int(args.mb * 1e6 / base))
    n_bytes = sum(len(d.encode()) for d in docs)
    work = Path(tempfile.mkdtemp(prefix="spine-dataprep-"))
    corpus_dir = work / "corpus"
    corpus_dir.mkdir()
    for i, d in enumerate(docs):
        (corpus_dir / f"doc{i:05d}.txt").write_text(d, encoding="utf-8")

    enc = tok.encoding
    raw_times, n_tokens = [], 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        ids = enc.encode_ordinary_batch(docs, num_threads=os.cpu_count() or 1)
        raw_times.append(time.perf_counter() - t0)
        n_tokens = sum(len(x) for x in ids)

    spine_times = []
    for _ in range(args.reps):
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        dm = PretrainDataModule(source=str(corpus_dir), tokenizer="gpt2", vocab_dir=args.vocab_dir, context_length=1024,
                                cache_dir=str(cache), batch_size=8)
        _ = dm.tokenizer  # built outside the timing, as the raw path's encoding is (~0.5 s to read the vocab)
        t0 = time.perf_counter()
        dm.prepare_data()
        spine_times.append(time.perf_counter() - t0)
    raw, sp = statistics.median(raw_times), statistics.median(spine_times)
    print(f"corpus: {len(docs)} documents, {n_bytes / 1e6:.1f} MB, {n_tokens:,} GPT-2 tokens, {os.cpu_count()} cores")
    print("| path | seconds | MB/s | tokens/s |")
    print("|---|---|---|---|")
    print(f"| raw tiktoken encode_ordinary_batch | {raw:.2f} | {n_bytes / 1e6 / raw:.1f} | {n_tokens / raw:,.0f} |")
    print(f"| spine prepare_data (read+tokenize+cache) | {sp:.2f} | {n_bytes / 1e6 / sp:.1f} | {n_tokens / sp:,.0f} |")
    print(f"spine / raw throughput = {raw / sp:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
