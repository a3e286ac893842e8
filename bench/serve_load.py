"""Loopback load check of `spine serve`: C concurrent clients x R requests, against the same requests one at a time.

Starts `spine serve` as a subprocess on 127.0.0.1 (a free port), sends every request once sequentially
(the reference answers and the one-at-a-time latency/throughput), then again from C client threads at
once, and checks that every concurrent answer arrived and equals its sequential answer (greedy requests
and seeded sampled ones: a request's samples do not depend on its batch-mates). Prints p50/p99 latency,
requests/s and generated tokens/s for both, and the server's batching counters.

    python bench/serve_load.py --device cpu --preset gpt2-tiny --threads 1           # CPU check
    python bench/serve_load.py --device cuda --preset gpt2-124m --tokenizer gpt2 \\
        --vocab_dir ../shared/data/gpt2-bpe --max_batch_size 32                     # the GPU variant
    python bench/serve_load.py --checkpoint DIR --device cuda                        # a trained model

Everything is bounded: each request has a timeout and the whole run a deadline (--deadline_s).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_checkpoint(preset: str, tokenizer: str, vocab_dir: str | None, out: Path) -> Path:
    import torch

    from spine.checkpoint import save_checkpoint
    from spine.model import GPT
    from spine.tokenizer import get_tokenizer

    tok = get_tokenizer(tokenizer, vocab_dir=vocab_dir)
    torch.manual_seed(0)
    kw = {"vocab_size": tok.vocab_size} if tokenizer == "byte" else {}
    return save_checkpoint(out / preset, GPT.from_preset(preset, **kw), tok)


def start_server(ckpt: Path, args) -> tuple[subprocess.Popen, str]:
    entry = "import sys; from spine.commands import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, "serve", "--checkpoint", str(ckpt), "--port", "0", "--model_name", "bench",
           "--device", args.device, "--max_batch_size", str(args.max_batch_size),
           "--batch_window_ms", str(args.batch_window_ms)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    line = ""
    deadline = time.monotonic() + 300
    while "http://" not in line:
        line = proc.stdout.readline()
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("spine serve did not start")
    print(line.strip(), flush=True)
    return proc, "http://" + line.split("http://", 1)[1].split()[0].removesuffix("/v1")


def requests_for(n: int) -> list[dict]:
    """A mix: greedy and seeded sampled completions, prompts of several lengths, one settings group each."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    out = []
    for i in range(n):
        prompt = " ".join(words[(i + k) % len(words)] for k in range(2 + i % 9))
        body = {"prompt": prompt, "max_tokens": 16}
        body.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "seed": i})
        out.append(body)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="gpt2-tiny")
    ap.add_argument("--tokenizer", default="byte", help="byte, or gpt2 (with --vocab_dir) for GPT-2-vocab presets")
    ap.add_argument("--vocab_dir", default=None)
    ap.add_argument("--checkpoint", default=None, help="serve this checkpoint instead of a random preset")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests_per_client", type=int, default=200)
    ap.add_argument("--max_batch_size", type=int, default=16)
    ap.add_argument("--batch_window_ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in the server (spine serve --threads)")
    ap.add_argument("--timeout_s", type=float, default=120.0, help="per request")
    ap.add_argument("--deadline_s", type=float, default=1800.0, help="whole run")
    args = ap.parse_args()
    from openai import OpenAI

    tmp = tempfile.TemporaryDirectory()
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(args.preset, args.tokenizer, args.vocab_dir,
                                                                          Path(tmp.name))
    proc, base = start_server(ckpt, args)
    timer = threading.Timer(args.deadline_s, lambda: (proc.kill(), os._exit(3)))
    timer.daemon = True
    timer.start()
    try:
        reqs = requests_for(args.clients * args.requests_per_client)
        local = threading.local()

        def send(body: dict) -> tuple[float, str, int, str]:
            if not hasattr(local, "c"):
                local.c = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=args.timeout_s)
            t0 = time.perf_counter()
            r = local.c.completions.create(model="bench", **body)
            return time.perf_counter() - t0, r.choices[0].text, r.usage.completion_tokens, r.choices[0].finish_reason

        send(reqs[0])  # warm-up
        t0 = time.perf_counter()
        seq = [send(b) for b in reqs]
        seq_wall = time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            futs = [pool.submit(send, b) for b in reqs]
            conc, errors = [], 0
            for f in futs:
                try:
                    conc.append(f.result(timeout=args.timeout_s + 10))
                except Exception as e:  # noqa: BLE001 - counted as lost
                    errors += 1
                    conc.append(None)
                    print(f"lost: {type(e).__name__}: {e}", file=sys.stderr)
        conc_wall = time.perf_counter() - t0
        import urllib.request

        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            health = json.loads(r.read())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        timer.cancel()

    wrong = sum(1 for s, c in zip(seq, conc) if c is not None and (c[1], c[2], c[3]) != (s[1], s[2], s[3]))
    n = len(reqs)

    def stats(rows, wall):
        lat = [r[0] for r in rows if r is not None]
        toks = sum(r[2] for r in rows if r is not None)
        return {"p50_ms": 1000 * pct(lat, 50), "p99_ms": 1000 * pct(lat, 99), "mean_ms": 1000 * statistics.fmean(lat),
                "req_per_s": len(lat) / wall, "tok_per_s": toks / wall, "wall_s": wall}

    result = {"device": args.device, "model": args.checkpoint or args.preset, "clients": args.clients,
              "requests": n, "lost": errors, "wrong": wrong, "sequential": stats(seq, seq_wall),
              "concurrent": stats(conc, conc_wall), "server": health,
              "mean_batch": (health["requests"] - n - 1) / max(1, health["batches"] - n - 1)}
    print(json.dumps(result, indent=1))
    s, c = result["sequential"], result["concurrent"]
    print(f"| one at a time | {n} | 0 | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['req_per_s']:.1f} | "
          f"{s['tok_per_s']:.0f} |")
    print(f"| {args.clients} concurrent clients | {n} | {errors} lost, {wrong} wrong | {c['p50_ms']:.1f} | "
          f"{c['p99_ms']:.1f} | {c['req_per_s']:.1f} | {c['tok_per_s']:.0f} |")
    print(f"throughput x{c['req_per_s'] / s['req_per_s']:.2f}; mean prompts per engine call under load "
          f"{result['mean_batch']:.2f}")
    sys.exit(1 if errors or wrong else 0)


if __name__ == "__main__":
    main()
