"""Export a run (the quickstart's, by default) to an HF folder and to GGUF f16 and q8_0, and compare, over the
held-out rows (data/tasks/eval.jsonl: never trained or selected on), what each export answers with what sft answers:
prompt ids, greedy answers, exact match.

Each export runs `sft export ... --check N --json` (the round-trip check through the export's own runtime:
transformers for hf, llama.cpp for GGUF); exact match is scored on the answers the check generated, decoded by the
run's tokenizer and normalised as `sft eval` does. `sft eval` itself (batched generation) is run beside them.

Usage: python scripts/export_quickstart.py RUN [--rows 120] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORTS = [("hf", None), ("gguf", "f16"), ("gguf", "q8_0")]


def sft(*args: str) -> dict:
    command = [sys.executable, "-m", "sft_cli", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from sft_cli.export.check import check_rows
    from sft_cli.runs.evaluate import normalise

    tokenizer = AutoTokenizer.from_pretrained(args.run)
    held_out = Path("data/tasks/eval.jsonl")
    expected = {row.number: row.fields["output"] for row in check_rows(args.run, args.rows, held_out)}

    def exact(ids_by_row: dict[int, list[int]]) -> float:
        hits = sum(
            normalise(tokenizer.decode(ids, skip_special_tokens=True)) == normalise(expected[row])
            for row, ids in ids_by_row.items()
        )
        return hits / len(ids_by_row)

    started = time.perf_counter()
    evaluation = sft("eval", str(args.run), "--data", str(held_out), "--limit", str(args.rows),
                     "--max-new-tokens", str(args.max_new_tokens))["results"][0]  # fmt: skip
    print(f"sft eval: exact match {evaluation['exact_match']:.1%} ({time.perf_counter() - started:.0f} s)")
    out = Path(tempfile.mkdtemp(prefix="export-quickstart-"))
    check_args = [
        "--check-data",
        str(held_out),
        "--check",
        str(args.rows),
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    rows = []
    for fmt, dtype in EXPORTS:
        target = out / f"{fmt}-{dtype or 'as-trained'}"
        extra = ["--dtype", dtype] if dtype else []
        started = time.perf_counter()
        report = sft("export", str(args.run), "--format", fmt, *extra, "--output", str(target), *check_args)
        seconds = time.perf_counter() - started
        check = report["check"]
        per_row = check["per_row"]
        size = sum(p.stat().st_size for p in Path(report["folder"]).iterdir() if p.suffix in (".gguf", ".safetensors"))
        rows.append((
            f"{fmt} {dtype or ''}".strip(), check["runtime"], f"{check['prompt_ids_equal']}/{check['rows']}",
            f"{check['identical_generations']}/{check['rows']}", f"{check['stops_ok']}/{check['rows']}",
            f"{exact({r['row']: r['export_ids'] for r in per_row}):.1%}",
            f"{exact({r['row']: r['sft_ids'] for r in per_row}):.1%}", f"{seconds:.0f} s", f"{size / 2**20:.0f} MB",
        ))  # fmt: skip
    header = ("export", "runtime", "prompt ids equal", "identical answers", "stops right", "exact match (export)",
              "exact match (sft generate)", "export + check", "size")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"exports in {out}")


if __name__ == "__main__":
    main()
