"""Attention for padding-free and packed batches: sft's per-sequence loop (one SDPA call per sequence, the
`sft_varlen` kernel of training/attention.py) against PyTorch's FlexAttention with a document mask (block-diagonal
causal), compiled, forward and backward, on SmolLM2-135M's attention shape (9 query heads, 3 key/value heads,
head dim 64). The outputs must agree; each case reports the mean time of the timed repeats after warm-up (the
compile time separately). Forward and backward on CUDA; forward only on CPU, where FlexAttention has no backward
(torch 2.13: "FlexAttention does not support backward on CPU"), so it cannot serve CPU training at all.

    python scripts/bench_attention.py [--repeats 5]

Cases: a padding-free batch of 8 mixed-length sequences (the quickstart's and bench_train's shape), and packed bins
of 1,024 and 4,096 tokens made of many short sequences.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM = 9, 3, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKWARD = DEVICE == "cuda"


def per_sequence(q, k, v, bounds):
    outputs = [
        F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, enable_gqa=True)
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=2)


def flex_function():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def mask_of(document):
        """Built once per batch and shared by every layer, as a model would."""

        def causal_document(b, h, q_index, kv_index):
            return (document[q_index] == document[kv_index]) & (q_index >= kv_index)

        return create_block_mask(causal_document, None, None, len(document), len(document), device=DEVICE)

    def run(q, k, v, mask):
        return compiled(q, k, v, block_mask=mask, enable_gqa=True)

    return run, mask_of


def case(name: str, lengths: list[int], repeats: int, flex, mask_of) -> None:
    tokens = sum(lengths)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, tokens, DIM, generator=generator).to(DEVICE).requires_grad_(BACKWARD)
        for heads in (HEADS, KV_HEADS, KV_HEADS)
    )
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(DEVICE)
    mask = mask_of(document)
    results = {}
    for kernel, call in (("per-sequence SDPA", lambda: per_sequence(q, k, v, bounds)),
                         ("FlexAttention", lambda: flex(q, k, v, mask))):  # fmt: skip
        times = []
        for _ in range(repeats + 1):  # the first call compiles
            started = time.perf_counter()
            out = call()
            if BACKWARD:
                out.sum().backward()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        first, times = times[0], times[1:]
        results[kernel] = (out.detach(), sum(times) / len(times), first)
    loop, flexed = results["per-sequence SDPA"], results["FlexAttention"]
    difference = (loop[0] - flexed[0]).abs().max().item()
    print(f"| {name} | {len(lengths)} | {tokens:,} | {loop[1] * 1000:,.1f} | {flexed[1] * 1000:,.1f} | "
          f"{loop[1] / flexed[1]:.2f}x | {flexed[2]:.1f} | {difference:.1e} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    flex, mask_of = flex_function()
    print(f"{DEVICE}: {'forward and backward' if BACKWARD else 'forward only (FlexAttention has no CPU backward)'}")
    print("| case | sequences | tokens | per-sequence SDPA ms | FlexAttention ms | flex speed-up | flex first call s "
          "| max difference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    case("padding-free batch of 8", [rng.randint(20, 400) for _ in range(8)], args.repeats, flex, mask_of)
    for capacity in (1024, 4096):
        lengths, total = [], 0
        while True:
            n = rng.randint(16, 64)
            if total + n > capacity:
                break
            lengths.append(n)
            total += n
        case(f"packed bin of {capacity:,}", lengths, args.repeats, flex, mask_of)


if __name__ == "__main__":
    main()
