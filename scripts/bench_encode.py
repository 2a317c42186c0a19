"""Encoding throughput: sft's encode (render + tokenize + mask + diagnose) against TRL's own SFTTrainer
preprocessing of the same rows as prompt/completion, in one run, with the SmolLM2 tokenizer.

Usage: python scripts/bench_encode.py [--rows 20000] [--model fixtures/smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows_for(n: int) -> list[dict]:
    base = [json.loads(line) for line in (ROOT / "data" / "tasks" / "train.jsonl").read_text().splitlines()]
    return [base[i % len(base)] for i in range(n)]


def time_sft(rows: list[dict], model: Path, diagnose: bool) -> float:
    from transformers import AutoTokenizer

    from sft_cli.data.rows import Row, Rows, normalise
    from sft_cli.encoding.encode import encode_rows, prepare_tokenizer
    from sft_cli.recipe.schema import Recipe

    recipe = Recipe.model_validate({"model": {"name": str(model)}, "data": {"path": "x.jsonl"}, "max_length": 256})
    tokenizer = AutoTokenizer.from_pretrained(model)
    prepare_tokenizer(tokenizer, recipe)
    start = time.perf_counter()
    normalised = Rows([Row(i, normalise(r, "alpaca", {}, False)) for i, r in enumerate(rows, 1)], "bench", "alpaca")
    encoded = encode_rows(normalised, tokenizer, recipe, diagnose=diagnose)
    elapsed = time.perf_counter() - start
    assert encoded.stats.examples == len(rows)
    return elapsed


def time_trl(rows: list[dict], model: Path) -> float:
    """TRL's preprocessing (tokenize prompt and prompt+completion, build completion masks) of the same text."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_cli.encoding.templates import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [render_prompt("alpaca", {**r, "input": r.get("input", "")}, tokenizer).text for r in rows]
    dataset = datasets.Dataset.from_dict(
        {"prompt": prompts, "completion": [r["output"] + tokenizer.eos_token for r in rows]}
    )
    tiny = AutoModelForCausalLM.from_pretrained(ROOT / "fixtures" / "tiny-llama", dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_length=256, report_to="none", use_cpu=True, bf16=False)
        trainer = SFTTrainer(model=tiny, args=args, train_dataset=dataset.select(range(8)), processing_class=tokenizer)
        datasets.disable_caching()
        start = time.perf_counter()
        trainer._prepare_dataset(dataset, tokenizer, args, False, None, "bench")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--model", type=Path, default=ROOT / "fixtures" / "smollm2-135m")
    args = parser.parse_args()
    rows = rows_for(args.rows)
    results = {
        "sft encode (with diagnostics)": time_sft(rows, args.model, diagnose=True),
        "sft encode (no diagnostics, as in train)": time_sft(rows, args.model, diagnose=False),
        "TRL SFTTrainer preprocessing": time_trl(rows, args.model),
    }
    trl = results["TRL SFTTrainer preprocessing"]
    print(f"{args.rows} rows, tokenizer {args.model.name}")
    for name, seconds in results.items():
        print(f"  {name:42s} {seconds:7.2f} s  {args.rows / seconds:9.0f} rows/s  ({trl / seconds:.2f}x TRL)")


if __name__ == "__main__":
    main()
