"""Generation metrics during training (`training.eval_generate`): at every evaluation the model answers the first
N eval rows greedily and is scored as `sft eval` scores it (`runs.evaluate.Score`: exact match and containment of
the final answer), so early stopping and the kept checkpoint can follow what users judge rather than the loss.

The prompts are the very ids training uses: each eval example's tokens before its first trained run; the expected
answer is that run without its stop token. Generation runs with the attention the model was loaded with (sft's
per-sequence kernel serves packed training batches only), then training's kernel is put back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from sft_cli.encoding.encode import IGNORE
from sft_cli.runs.evaluate import Score
from sft_cli.runs.generate import GENERATE_BATCH, Sampling, generate_ids
from sft_cli.training.attention import use_attention


@dataclass
class GenerationEval:
    rows: int
    max_new_tokens: int
    stop_ids: list[int]
    pad_id: int
    tokenizer: Any
    train_attention: str
    generate_attention: str

    def score(self, model, dataset, prefix: str) -> dict[str, float]:
        """`{prefix}_exact_match`, `{prefix}_contains` and the seconds it took, over the first rows of `dataset`."""
        cases = self.cases(dataset)
        if not cases:
            return {}
        started = time.perf_counter()
        answers = self.answer(model, [prompt for prompt, _ in cases])
        score = Score()
        for answer, (_, expected) in zip(answers, cases):
            score.add(self.text(answer), self.text(expected))
        scores = score.as_dict()
        return {
            f"{prefix}_exact_match": scores["exact_match"],
            f"{prefix}_contains": scores["contains"],
            f"{prefix}_generate_seconds": round(time.perf_counter() - started, 2),
        }

    def estimate_seconds(self, model, dataset) -> float:
        """What one evaluation's generation will take, timed on its first batch before training starts (the plan
        reports it): every batch is taken to cost the first one's time, answers running to max_new_tokens while
        the model has not yet learned to stop."""
        cases = self.cases(dataset)
        if not cases:
            return 0.0
        started = time.perf_counter()
        self.answer(model, [prompt for prompt, _ in cases[:GENERATE_BATCH]])
        return (time.perf_counter() - started) * math.ceil(len(cases) / GENERATE_BATCH)

    def cases(self, dataset) -> list[tuple[list[int], list[int]]]:
        return [case for case in map(self.case, dataset.select(range(min(self.rows, len(dataset))))) if case]

    def answer(self, model, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy answers with the attention generation runs with, training's kernel put back afterwards."""
        use_attention(model, self.generate_attention)
        try:
            return generate_ids(
                model, prompts, self.stop_ids, self.pad_id, Sampling(max_new_tokens=self.max_new_tokens)
            )
        finally:
            use_attention(model, self.train_attention)

    def case(self, row: dict) -> tuple[list[int], list[int]] | None:
        """(prompt ids, expected answer ids) of an encoded example; None when nothing before its answer is prompt."""
        labels = row["labels"]
        first = next((i for i, label in enumerate(labels) if label != IGNORE), None)
        if not first:
            return None
        end = next((i for i in range(first, len(labels)) if labels[i] == IGNORE), len(labels))
        return list(row["input_ids"][:first]), list(row["input_ids"][first:end])

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.stop_ids], skip_special_tokens=True).strip()
