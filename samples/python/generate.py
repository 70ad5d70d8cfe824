#!/usr/bin/env python3
"""Streams tokens from a .moerun model with the Python binding and reports the speed.

    python3 samples/python/generate.py model.moerun --ids 0,17,42 --max-tokens 32 --temperature 0.7 --seed 1

Token ids in, token ids out: moerun has no tokenizer. Needs the `moerun` package (pip install
bindings/python) and libmoerun (found as the package's README describes, e.g. via MOERUN_LIBRARY).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

try:
    import moerun
except ImportError:
    # Run from a source checkout without installing: use the binding next to this sample.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "bindings", "python", "src"))
    import moerun


def parse_ids(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .moerun file")
    p.add_argument("--ids", type=parse_ids, default=None, help="prompt token ids, e.g. 0,17,42 (default: bos)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "f32", "bf16"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    args = p.parse_args(argv)

    try:
        t0 = time.perf_counter()
        with moerun.Model(args.model, precision=args.precision, n_threads=args.threads) as model:
            info = model.info
            load_s = time.perf_counter() - t0
            prompt = args.ids if args.ids else [max(info.bos_token_id, 0)]
            print(f"{info.architecture} on {info.backend}/{info.precision}: {info.num_layers} layers, "
                  f"vocab {info.vocab_size}; loaded in {load_s * 1e3:.1f} ms (moerun {moerun.version()})",
                  file=sys.stderr)
            with moerun.Session(model, kv_capacity=len(prompt) + args.max_tokens + 1) as session, \
                    moerun.Sampler(args.temperature, args.top_k, args.top_p, args.min_p, args.seed) as sampler:
                tokens: List[int] = []
                t0 = time.perf_counter()
                first_s = 0.0
                for tok in session.stream(prompt, args.max_tokens, sampler=sampler):
                    if not tokens:
                        first_s = time.perf_counter() - t0
                    tokens.append(tok)
                    print(tok, end=" ", flush=True)
                total_s = time.perf_counter() - t0
    except moerun.MoerunError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print()
    decode_n = len(tokens) - 1
    decode_s = total_s - first_s
    rate = f"{decode_n / decode_s:.1f} tokens/s" if decode_n > 0 and decode_s > 0 else "n/a"
    print(f"prompt {len(prompt)} tokens, first token after {first_s * 1e3:.1f} ms; "
          f"{len(tokens)} tokens in {total_s:.3f} s, decode {rate}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
