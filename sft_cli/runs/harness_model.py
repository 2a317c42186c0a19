"""A run's model as lm-evaluation-harness sees it. Every request's context (the task's question, few-shot examples
and all) is the instruction of one row, prompted exactly as `sft generate` prompts it: the run's template and
tokenization (`prompt_token_ids`), its stop tokens, LoRA adapters applied without a merge. lm-eval's own chat-template
path is not used: it knows the tokenizer's template only, not an instruction template or sft's tokenization.

A continuation is scored after that prompt with its leading whitespace dropped, as an answer starts in training;
a rolling (perplexity) request is a document, so no template applies to it. With `raw`, requests are the task's
text as it is, tokenized as lm-eval tokenizes for a base model (no template): how pretrained knowledge is usually
benchmarked. Imported only when the `eval` extra is installed (lm_eval at the top)."""

from __future__ import annotations

from collections import defaultdict

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from sft_cli.runs.generate import LoadedRun, Sampling, generate_ids, pad_id, prompt_token_ids, stop_ids

MAX_GEN_TOKS = 256  # lm-eval's default for tasks that set none


class RunModel(TemplateLM):
    def __init__(self, run: LoadedRun, raw: bool = False, batch_size: int = 16, on_request=None):
        super().__init__()
        self.run, self.tokenizer, self.raw, self.batch_size = run, run.tokenizer, raw, batch_size
        self.on_request = on_request  # called with the number of requests done (progress)
        self._prompts: dict[str, list[int]] = {}
        config = getattr(run.model, "config", None)
        self.max_length = getattr(config, "max_position_embeddings", None) or 2048

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What a document or an empty context is scored after: BOS where the tokenizer has one (as lm-eval's
        Hugging Face backend), else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Plain text's ids; the tokenizer's own BOS only for raw prompts (a template writes its own)."""
        special = self.raw if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=special)

    def prompt(self, context: str) -> list[int]:
        """The ids `sft generate RUN CONTEXT` would feed the model, or with `raw` the text's own (few-shot
        contexts repeat per choice: kept)."""
        if context not in self._prompts:
            row = {"instruction": context, "input": ""}
            self._prompts[context] = self.tok_encode(context) if self.raw else prompt_token_ids(self.run, row)
        return self._prompts[context]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if self.raw:  # lm-eval's own split: the joined text's ids after the context's
            return super()._encode_pair(context, continuation)
        return self.prompt(context), self.tok_encode(continuation.lstrip() or continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for context, continuation in (request.args for request in requests):
            if context:
                pairs.append(self._encode_pair(context, continuation))
            else:  # a task without a question scores the continuation after BOS (or EOS), as lm-eval does
                pairs.append(([self.prefix_token_id], self.tok_encode(continuation, add_special_tokens=False)))
        return self._score(pairs)

    def _loglikelihood_tokens(self, requests, **kwargs) -> list[tuple[float, bool]]:
        return self._score([(context, continuation) for _, context, continuation in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (text,) in (request.args for request in requests):
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    self.tok_encode(text, add_special_tokens=False),
                    self.prefix_token_id,
                    self.max_length,
                    context_len=1,
                )
            ]
            totals.append(sum(logprob for logprob, _ in self._score(windows, report=False)))
            self._advance(1)
        return totals

    def _score(self, pairs: list[tuple[list[int], list[int]]], report: bool = True) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its context, and whether greedy decoding would write it;
        longest first in right-padded batches, returned in request order. The model is fed at most max_length
        tokens (the last token is only a target), a context too long losing its oldest tokens."""
        pairs = [self._fit(context, answer) for context, answer in pairs]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        model, pad = self.run.model, pad_id(self.tokenizer)
        for start in range(0, len(order), self.batch_size):
            batch = [pairs[i] for i in order[start : start + self.batch_size]]
            rows = [(context + answer)[:-1] for context, answer in batch]
            width = max(map(len, rows))
            ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=model.device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
            for row, (context, answer), index in zip(range(len(batch)), batch, order[start:]):
                first = len(context) - 1  # the position whose logits predict the answer's first token
                scores = torch.log_softmax(logits[row, first : first + len(answer)].float(), dim=-1)
                target = torch.tensor(answer, device=model.device)
                chosen = scores.gather(-1, target[:, None]).sum().item()
                results[index] = (chosen, bool((scores.argmax(-1) == target).all()))
            if report:
                self._advance(len(batch))
        return results

    def _fit(self, context: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
        """At most max_length + 1 tokens in all, at least one of them context."""
        answer = answer[-self.max_length :]
        return context[-max(1, self.max_length + 1 - len(answer)) :], answer

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answers, generated as `sft generate` does and cut at the task's stop strings; requests sharing
        generation settings are generated together."""
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(index)
        answers: list[str] = [""] * len(requests)
        eos = self.tokenizer.decode([self.eot_token_id])
        for indices in groups.values():
            settings = normalize_gen_kwargs(requests[indices[0]].args[1], MAX_GEN_TOKS)
            until = handle_stop_sequences(settings.get("until"), eos=eos)
            sampling = Sampling(
                max_new_tokens=int(settings["max_gen_toks"]),
                temperature=float(settings.get("temperature") or 0.0) if settings.get("do_sample") else 0.0,
                top_p=float(settings.get("top_p") or 1.0),
            )
            room = max(1, self.max_length - sampling.max_new_tokens)
            prompts = [self.prompt(requests[i].args[0])[-room:] for i in indices]
            generated = generate_ids(
                self.run.model,
                prompts,
                stop_ids(self.run),
                pad_id(self.tokenizer),
                sampling,
                self.batch_size,
                on_batch=self._advance,
            )
            for index, ids in zip(indices, generated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                answers[index] = postprocess_generated_text(text, until, None)
        return answers

    def _advance(self, done: int) -> None:
        if self.on_request:
            self.on_request(done)
