"""Generation with a trained run: the prompt rendered by the run's own template and tokenized exactly as in
training (`encode.prompt_ids`), greedy by default, stopping at EOS or the template's end of turn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_cli.device import native_bf16
from sft_cli.encoding.encode import prompt_ids
from sft_cli.encoding.loading import load_model
from sft_cli.encoding.rendered import RenderOptions
from sft_cli.encoding.templates import render_options, render_prompt
from sft_cli.errors import SftError
from sft_cli.recipe.sections import CustomTemplate, ModelSection
from sft_cli.runs.record import RunRecord, read_record


@dataclass
class LoadedRun:
    """A model ready to generate, with the run record and tokenizer it was trained with."""

    model: Any
    tokenizer: Any
    record: RunRecord
    options: RenderOptions  # as in training: the recorded stop tokens, the tokenizer's control tokens

    @property
    def template(self) -> str | CustomTemplate:
        return self.record.encoding.template


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0


def load_run(run_dir: Path, base: bool = False):
    """The run's model (full, LoRA base + adapter, or merged), or with `base` the untouched base model; always
    with the run's tokenizer (new special tokens included) and template."""
    import torch

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    tokenizer = run_tokenizer(run_dir, record)
    dtype = torch.bfloat16 if native_bf16() else torch.float32
    is_lora = (run_dir / "adapter_config.json").exists()
    if base or is_lora:
        model = load_model(record.base_model, dtype, vocab_size=len(tokenizer))
        if is_lora and not base:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, run_dir)
    else:
        model = load_model(ModelSection(name=str(run_dir)), dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return LoadedRun(model, tokenizer, record, render_options(record.encoding, tokenizer, record.stop_tokens))


def run_tokenizer(run_dir: Path, record: RunRecord):
    """The run folder's tokenizer. Custom code in it runs only where the recipe that trained it allowed it
    (`model.trust_remote_code`); a folder asking for it otherwise is one error, not transformers' traceback."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(run_dir, trust_remote_code=record.base_model.trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise SftError(
                f"{run_dir}: its tokenizer asks to run custom code from the folder (auto_map in "
                "tokenizer_config.json), and the recipe it was trained from did not allow that",
                hint="read that code; if you trust it, train with model.trust_remote_code: true",
            ) from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SftError(f"{run_dir}: cannot load its tokenizer ({reason})") from None


def prompt_token_ids(run: LoadedRun, row: dict) -> list[int]:
    """The prompt of a row (alpaca fields or `messages`), as the model saw prompts in training."""
    rendered = render_prompt(run.template, row, run.tokenizer, run.options)
    return prompt_ids(run.tokenizer, rendered, run.template, run.options, run.record.encoding.special_tokens_in_text)


def stop_ids(run: LoadedRun) -> list[int]:
    """EOS and the model's end-of-turn tokens, as in training: generation stops at whichever comes first."""
    return stop_token_ids(run.tokenizer, run.options)


def stop_token_ids(tokenizer, options: RenderOptions) -> list[int]:
    """The ids of the render options' stop tokens (those the tokenizer knows)."""
    ids = tokenizer.convert_tokens_to_ids(list(options.stop_tokens))
    return sorted({i for i in ids if i is not None and i >= 0})


GENERATE_BATCH = 16  # prompts generated together


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_ids(
    model,
    prompts: list[list[int]],
    stops: list[int],
    pad: int,
    sampling: Sampling = Sampling(),
    batch_size: int = GENERATE_BATCH,
    on_batch=None,
) -> list[list[int]]:
    """The ids generated after each prompt, through the first stop id (kept), in order. Batches are left-padded
    so every prompt ends where generation starts."""
    import torch

    generated: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        options: dict[str, Any] = {"do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=stops,
                pad_token_id=pad,
                **options,
            )
        for sequence in output[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(sequence) if token in stops), len(sequence))
            generated.append(sequence[:end])
        if on_batch:
            on_batch(len(batch))
    return generated


def generate(
    run: LoadedRun, rows: list[dict], sampling: Sampling = Sampling(), batch_size: int = GENERATE_BATCH, on_batch=None
) -> list[str]:
    """Answers for rows, in order, prompted exactly as in training."""
    prompts = [prompt_token_ids(run, row) for row in rows]
    ids = generate_ids(run.model, prompts, stop_ids(run), pad_id(run.tokenizer), sampling, batch_size, on_batch)
    return [run.tokenizer.decode(sequence, skip_special_tokens=True).strip() for sequence in ids]
