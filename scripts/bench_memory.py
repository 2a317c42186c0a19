"""Peak memory of one training step with the full-logits loss and with the chunked loss (training/chunked_loss.py).

A small random-weight Qwen2-shaped model with Qwen's 151,936-token vocabulary (built here, no download), one
padding-free batch of 8 sequences with lengths drawn up to max_length 2048, the first half of each untrained (a
prompt under masked loss). Each mode runs in its own process (forward, backward, AdamW step, twice) and reports
its peak RSS, the step time and the loss; the two losses must agree.

    python scripts/bench_memory.py [--batch 8] [--max-length 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB = 151_936


def step(mode: str, batch: int, max_length: int, seed: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sft_cli.training.chunked_loss import chunked_loss, head_of, hidden_states_out

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_length, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(64, max_length + 1, (batch,), generator=generator).tolist()
    ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=generator)
    labels = ids.clone()
    start = 0
    for n in lengths:
        labels[0, start : start + n // 2] = -100
        start += n
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, losses = [], []
    for _ in range(2):
        started = time.perf_counter()
        if mode == "chunked":
            head = head_of(model)
            with hidden_states_out(head):
                hidden = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            loss = chunked_loss(hidden, head, labels)[0]
        else:
            loss = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "tokens": sum(lengths), "peak_mb": round(peak), "baseline_mb": round(baseline),
            "step_s": round(min(times), 2), "loss": losses[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(step(args.mode, args.batch, args.max_length, args.seed)))
        return
    results = {}
    for mode in ("full", "chunked"):
        command = [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch),
                   "--max-length", str(args.max_length), "--seed", str(args.seed)]  # fmt: skip
        results[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    full, chunk = results["full"], results["chunked"]
    print(f"{'loss':>10} {'tokens':>7} {'peak MB':>8} {'above model MB':>15} {'step s':>7} {'loss value':>11}")
    for r in (full, chunk):
        above = r["peak_mb"] - r["baseline_mb"]
        print(f"{r['mode']:>10} {r['tokens']:>7} {r['peak_mb']:>8} {above:>15} {r['step_s']:>7} {r['loss']:>11.6f}")
    ratio, difference = chunk["step_s"] / full["step_s"], abs(chunk["loss"] - full["loss"])
    print(f"chunked / full peak: {chunk['peak_mb'] / full['peak_mb']:.1%}; step time ratio {ratio:.2f}; "
          f"loss difference {difference:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
