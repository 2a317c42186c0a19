"""Training throughput, side by side on the same rows and the same number of optimizer steps, each run in its own
process (clean peak memory):

  sft          `sft train` with its defaults (padding-free batches, per-sequence attention, fp32 on CPU, the
               chunked loss over trained tokens only)
  sft-full-logits  the same with `training.chunked_loss: false` (the model's own loss over full logits)
  sft-compiled the same with `training.compile: true` (each decoder layer compiled, dynamic shapes; the compile
               time is inside the measured time, as a user pays it)
  trl-default  a plain TRL SFTTrainer script with TRL's defaults (bf16, gradient checkpointing, padded batches)
  trl-tuned    the same script tuned by hand: fp32 on CPU, no gradient checkpointing, TRL's padding_free
  raw          a bare PyTorch loop (AdamW, no Trainer) over sft's own batches and attention, glibc's default
               allocation (as a plain script has it; sft keeps the CPU heap between steps: memory.CpuHeap)

Every run counts, in a forward hook on the model, the real (non-padding) tokens, the trained tokens and the
attention work of each training forward, so the figures mean the same for all. FLOPs = 6 x matmul parameters
(all but the input embedding) x real tokens + 6 x layers x hidden x sum of squared sequence lengths (causal
attention, forward and backward); "% peak" is against this machine's measured fp32 matmul rate (GPU: bf16).
Time is the span from the first optimizer step's start to the last one's end in every run (the first, slower
step included); "train() s" beside it is the whole training call, which also holds each Trainer's own start and
end: sft's ends with a resumable checkpoint (model and optimizer state), the TRL script saves nothing. "1st step s"
is the first step alone and "its update s" the weight update within it (where AdamW allocates its state, two fp32
copies of the trainable weights, first touched); "later % peak" is the rate over the steps after it, what a long
run approaches; "update ms" is the mean weight update of those steps (gradient clipping and the optimizer step:
memory-bound passes over all trainable weights, the same cost however few tokens a step holds).

Data: `tasks` (the bundled data/tasks/train.jsonl) or `mixed` (generated alpaca rows, answers long-tailed from
about 5 to 400 tokens), max_length 1024.
Usage: python scripts/bench_train.py [--data mixed] [--model fixtures/smollm2-135m] [--steps 6] [--batch 8]
       [--runs sft,trl-default,trl-tuned,raw]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import TASKS, words  # noqa: E402  (the same long-tailed row generator)

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 1024
SFT_RUNS = {"sft": {}, "sft-full-logits": {"chunked_loss": False}, "sft-compiled": {"compile": True}}


def rows_file(kind: str, folder: Path) -> Path:
    if kind == "tasks":
        return ROOT / "data" / "tasks" / "train.jsonl"
    rng = random.Random(0)
    path = folder / "mixed.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for _ in range(2000):
            f.write(
                json.dumps(
                    {
                        "instruction": f"{rng.choice(TASKS)} {words(rng, 6, 0.6, 1, 40)}",
                        "input": words(rng, 12, 0.8, 1, 60) if rng.random() < 0.3 else "",
                        "output": words(rng, 20, 1.0, 2, 150),
                    }
                )
                + "\n"
            )
    return path


class Counter:
    """Forward pre-hook: real tokens, trained tokens and sum of squared sequence lengths of training forwards."""

    def __init__(self):
        self.tokens = self.trained = self.squares = 0
        self.first: tuple[int, int] | None = None  # (tokens, squares) of the first training forward
        self.count_labels_here = False  # sft's runs count trained tokens in compute_loss instead

    def __call__(self, module, args, kwargs):
        if not module.training:
            return
        ids, labels = kwargs["input_ids"], kwargs.get("labels")
        if "cu_seq_lens_q" in kwargs:
            lengths = kwargs["cu_seq_lens_q"].diff().tolist()
        elif "position_ids" in kwargs and kwargs.get("attention_mask") is None:  # TRL padding-free
            starts = (kwargs["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            lengths = [b - a for a, b in zip(starts, starts[1:])]
        else:
            lengths = kwargs["attention_mask"].sum(1).tolist()
        self.tokens += sum(lengths)
        self.squares += sum(n * n for n in lengths)
        self.first = self.first or (self.tokens, self.squares)
        if labels is not None and not self.count_labels_here:
            self.trained += int((labels[..., 1:] != -100).sum())


def matmul_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is embedding
    return total - embedding.numel() + (embedding.numel() if tied else 0)


def train_flops(model, tokens: int, squares: int) -> float:
    config = model.config.get_text_config()
    hidden = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 6 * matmul_parameters(model) * tokens + 6 * config.num_hidden_layers * hidden * squares


def sft_recipe(data: Path, model: str, steps: int, batch: int, out: Path, training: dict) -> Path:
    import yaml

    recipe = {
        "model": {"name": model},
        "data": {"path": str(data)},
        "max_length": MAX_LENGTH,
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "logging_steps": 1,
            "save_steps": 10_000,
            "warmup_ratio": 0.0,
            **training,
        },
        "output": {"dir": str(out / "run")},
    }
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


class Times(NamedTuple):
    steps: float  # from the first step's start to the last step's end
    call: float  # the whole training call
    first: float  # the first step alone
    first_update: float  # its weight update (AdamW's state is allocated there)
    update: float  # mean weight update (gradient clipping and the optimizer step) of the steps after the first


def now() -> float:
    """The clock, after the GPU's queued work (CUDA runs asynchronously: without the wait a mark is a launch)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def times_of(marks: list[float], updates: list[float], call: float) -> Times:
    """From the step boundaries (the first step's start, then each step's end) and each step's update time."""
    later = updates[1:] or updates
    return Times(marks[-1] - marks[0], call, marks[1] - marks[0], updates[0], sum(later) / len(later))


def timed_train(trainer) -> Times:
    """Runs `trainer.train()`. The steps are what the tools are compared on: the call also holds each Trainer's own
    start and end (sft's run saves a resumable checkpoint at its end, about 5 s for SmolLM2 with its optimizer state;
    the TRL script saves none)."""
    from transformers import TrainerCallback

    marks, updates, update_start = [], [], []
    clip = trainer._clip_grad_norm  # the Trainer clips just before the optimizer step; no callback marks it

    def timed_clip(model):
        update_start[:] = [now()]
        return clip(model)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not marks:
                marks.append(now())

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            update_start[:] = update_start or [now()]  # when max_grad_norm is 0 nothing clips

        def on_optimizer_step(self, args, state, control, **kwargs):
            updates.append(now() - update_start.pop())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(now())

    trainer._clip_grad_norm = timed_clip
    trainer.add_callback(StepClock())
    start = now()
    trainer.train()
    return times_of(marks, updates, now() - start)


def run_sft(data, model, steps, batch, out, counter, training: dict) -> tuple:
    from sft_cli.recipe.schema import load_recipe
    from sft_cli.training.run import setup_session

    session = setup_session(load_recipe(sft_recipe(data, model, steps, batch, out, training)), no_cache=True)
    trainer = session.trainer
    trainer.model.register_forward_pre_hook(counter, with_kwargs=True)
    compute_loss = trainer.compute_loss

    def counted(model, inputs, *args, **kwargs):  # the chunked loss keeps the labels from the model's forward
        if model.training and counter.count_labels_here:
            counter.trained += int((inputs["labels"][..., 1:] != -100).sum())
        return compute_loss(model, inputs, *args, **kwargs)

    counter.count_labels_here = True
    trainer.compute_loss = counted
    return timed_train(trainer), trainer.model, session.plan.environment.precision


def run_trl(data, model_name, steps, batch, out, counter, tuned: bool) -> tuple:
    """What a user writes with TRL alone: prompt/completion rows, SFTTrainer, SFTConfig (defaults, or tuned)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_cli.encoding.templates import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": [render_prompt("alpaca", r, tokenizer).text for r in rows],
            "completion": [r["output"] + tokenizer.eos_token for r in rows],
        }
    )
    options = {"use_cpu": True} if not torch.cuda.is_available() else {}  # TRL's bf16 default refuses a CPU without
    if tuned:
        options |= {"activation_checkpointing": False, "padding_free": True, "max_length": None}
        if not torch.cuda.is_available():
            options |= {"bf16": False}
    args = SFTConfig(
        output_dir=str(out / "trl"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **({"max_length": MAX_LENGTH} | options),
    )
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.model.register_forward_pre_hook(counter, with_kwargs=True)
    return timed_train(trainer), trainer.model, "bf16" if args.bf16 else "fp32"


def run_raw(data, model_name, steps, batch, out, counter) -> tuple:
    """sft's batches and attention in a bare AdamW loop, nothing else (no Trainer, no callbacks, no heap policy)."""
    import torch

    from sft_cli.encoding.cache import prepare_split
    from sft_cli.encoding.loading import load_model, load_tokenizer
    from sft_cli.recipe.schema import load_recipe
    from sft_cli.training.attention import use_attention
    from sft_cli.training.batching import Collator
    from sft_cli.training.environment import detect

    recipe = load_recipe(sft_recipe(data, model_name, steps, batch, out, {})).recipe
    tokenizer = load_tokenizer(recipe)
    dataset = prepare_split(recipe, tokenizer, "train", cache=False).dataset()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = load_model(recipe.model, dtype, None, len(tokenizer))
    use_attention(model, detect(recipe, lambda: model).attention)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    model.register_forward_pre_hook(counter, with_kwargs=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    collate = Collator(tokenizer.pad_token_id, padding_free=True)
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)
    marks, updates = [now()], []
    for step in range(steps):
        batch_rows = dataset.select(order[step * batch : (step + 1) * batch])
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(list(batch_rows)).items()}
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        update_start = now()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(now())
        updates.append(marks[-1] - update_start)
    return times_of(marks, updates, marks[-1] - marks[0]), model, "bf16" if dtype == torch.bfloat16 else "fp32"


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_flops() -> float:
    """This machine's dense matmul rate: fp32 on CPU, bf16 on a GPU (measured, not a datasheet figure)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def worker(kind: str, data: Path, model: str, steps: int, batch: int) -> None:
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        if kind in SFT_RUNS:
            times, trained_model, precision = run_sft(data, model, steps, batch, Path(tmp), counter, SFT_RUNS[kind])
        elif kind == "raw":
            times, trained_model, precision = run_raw(data, model, steps, batch, Path(tmp), counter)
        else:
            times, trained_model, precision = run_trl(
                data, model, steps, batch, Path(tmp), counter, tuned=kind == "trl-tuned"
            )
    print(
        "RESULT "
        + json.dumps(
            {
                "precision": precision,
                "seconds": times.steps,
                "call_seconds": times.call,
                "update_seconds": times.update,
                "tokens": counter.tokens,
                "trained": counter.trained,
                "flops": train_flops(trained_model, counter.tokens, counter.squares),
                "first_seconds": times.first,
                "first_update_seconds": times.first_update,
                "first_flops": train_flops(trained_model, *counter.first),
                "peak_mb": peak_memory_mb(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["tasks", "mixed"], default="mixed")
    parser.add_argument("--model", default=str(ROOT / "fixtures" / "smollm2-135m"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", default="sft,trl-default,trl-tuned,raw", help="comma-separated; sft always runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.rows), args.model, args.steps, args.batch)
    peak = peak_flops()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = rows_file(args.data, Path(tmp))
        for kind in dict.fromkeys(["sft", *args.runs.split(",")]):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    kind,
                    "--rows",
                    str(data),
                    "--model",
                    args.model,
                    "--steps",
                    str(args.steps),
                    "--batch",
                    str(args.batch),
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            results[kind] = json.loads(line.removeprefix("RESULT "))
    print(
        f"data {args.data}, model {Path(args.model).name}, {args.steps} steps of {args.batch} rows, "
        f"max_length {MAX_LENGTH}; matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        f"{'run':15s} {'prec':5s} {'tokens/s':>9s} {'trained/s':>9s} {'tokens':>7s} {'% peak':>7s} "
        f"{'peak MB':>8s} {'train() s':>9s} {'1st step s':>10s} "
        f"{'its update s':>12s} {'later % peak':>12s} {'update ms':>9s}  sft vs this"
    )
    base = results["sft"]["tokens"] / results["sft"]["seconds"]
    for kind, r in results.items():
        rate = r["tokens"] / r["seconds"]
        later_seconds = r["seconds"] - r["first_seconds"]
        later = f"{100 * (r['flops'] - r['first_flops']) / later_seconds / peak:11.1f}%" if later_seconds else "-"
        print(
            f"{kind:15s} {r['precision']:5s} {rate:9.1f} {r['trained'] / r['seconds']:9.1f} {r['tokens']:7d} "
            f"{100 * r['flops'] / r['seconds'] / peak:6.1f}% {r['peak_mb']:8.0f} {r['call_seconds']:9.1f} "
            f"{r['first_seconds']:10.2f} {r['first_update_seconds']:12.2f} {later:>12s} "
            f"{1000 * r['update_seconds']:9.0f}  {base / rate:.2f}x"
        )


if __name__ == "__main__":
    main()
