"""A forecast of a run's peak memory per process, before anything trains: weights, gradients, optimizer state,
activations of the longest batch the plan can draw, the loss's logits (or their chunks), and the process itself.

Activations are counted as autograd keeps them for a Llama-style decoder layer (attention + gated MLP, two RMS
norms), per token and in the training precision: the residual input and the two norms (2 x hidden each), the
attention's inputs and output (4 x hidden + 2 x key/value width; the CPU and flash kernels keep no T x T
scores), and the MLP's four intermediate tensors (4 x intermediate). Under gradient checkpointing each layer
keeps only its input, and one layer is recomputed at a time. LoRA's dropout keeps a copy (and a mask) of each
adapted layer's input. On CPU a fifth of the batch's memory is added for glibc's heap fragmentation (freed
memory is kept in the heap for the next step, and given back above the forecast: `CpuHeap`). The figure is for
the longest batch the sampler can draw (the `batch_size` longest sequences, or a full packed or padded batch).
`scripts/check_memory_forecast.py` and tests/training/test_memory.py compare forecasts with measured peaks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from sft_cli.recipe.schema import Recipe
from sft_cli.training.environment import CHUNKED, FULL_LOGITS, FUSED, Environment

MB = 2**20
ADAM_STATES = 2  # AdamW keeps two moments per trainable parameter, in the parameter's dtype
CHUNK_BYTES = 4 * 2**25  # the chunked loss's logits chunk (chunked_loss.CHUNK_ELEMENTS, fp32)
WARN_SHARE = 0.9


@dataclass(frozen=True)
class ModelShape:
    """What the forecast needs of a model, read from its config and parameters (no weights needed)."""

    total_parameters: int
    trainable_parameters: int
    layers: int
    hidden: int
    intermediate: int
    key_value_width: int  # key/value heads x head dim
    vocabulary: int
    lora_inputs: int = 0  # per token and layer: the width of every input LoRA's dropout copies (0 without dropout)


@dataclass
class MemoryForecast:
    """Predicted peak bytes per process, by part, against the memory of the device the run will use."""

    parts: dict[str, int]
    device_memory: int | None
    batch_tokens: int
    fixes: list[tuple[str, int]] = field(default_factory=list)  # (recipe change, forecast after it), cheapest first

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def share(self) -> float | None:
        return self.total / self.device_memory if self.device_memory else None

    @property
    def too_big(self) -> bool:
        return self.share is not None and self.share > WARN_SHARE

    def as_dict(self) -> dict:
        return {
            "forecast_mb": round(self.total / MB),
            "parts_mb": {name: round(size / MB) for name, size in self.parts.items()},
            "device_memory_mb": round(self.device_memory / MB) if self.device_memory else None,
            "batch_tokens": self.batch_tokens,
            "fixes": [{"change": change, "forecast_mb": round(size / MB)} for change, size in self.fixes],
        }


def model_shape(model, lora_dropout: float = 0.0) -> ModelShape:
    """The shape of a loaded model (real or on the meta device), PEFT-wrapped or not."""
    config = model.config.get_text_config()
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    adapted = [m for name, m in model.named_modules() if ".layers.0." in name and hasattr(m, "lora_A")]
    lora_inputs = sum(m.in_features for m in adapted) if lora_dropout else 0
    return ModelShape(
        total_parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        layers=config.num_hidden_layers,
        hidden=hidden,
        intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
        key_value_width=kv_heads * head_dim,
        vocabulary=config.vocab_size,
        lora_inputs=lora_inputs,
    )


def longest_batch(lengths: list[int], batch_size: int, layout: str, max_length: int) -> tuple[int, int]:
    """(tokens, sequences) of the largest micro-batch the sampler can draw: the `batch_size` longest sequences
    (padding-free), that many rows of the longest length (padded), or full bins (packed)."""
    if layout == "packed":
        return batch_size * max_length, batch_size
    longest = sorted(lengths, reverse=True)[:batch_size]
    if layout == "padded":
        return batch_size * (longest[0] if longest else 0), batch_size
    return sum(longest), len(longest)


@dataclass(frozen=True)
class TrainingShape:
    """The recipe's and the environment's choices that move memory."""

    activation_bytes: int  # 4 in fp32, 2 under bf16/fp16 autocast
    tokens: int  # of the longest micro-batch
    trained_share: float  # trained tokens / all tokens (the chunked and fused losses only see trained tokens)
    gradient_checkpointing: bool
    chunked_loss: bool  # sft's chunked loss (CPU) or TRL's fused head (CUDA): never the full logits
    runtime: int  # bytes of the process before the model: interpreter, libraries, tokenizer, data
    foreach_optimizer: bool = False  # on CUDA: torch's AdamW updates all tensors at once; no heap fragmentation
    trained_bytes: float = 4  # per trainable parameter (its weight, gradient and each AdamW moment)
    frozen_bytes: float = 4  # per frozen parameter (LoRA's base: bf16, or 4-bit)
    shards: tuple[int, int, int] = (1, 1, 1)  # what weights, gradients and optimizer state are divided by


def shards(env: Environment) -> tuple[int, int, int]:
    """Per process, FSDP and ZeRO-3 keep 1/N of weights, gradients and optimizer state, ZeRO-2 of the latter two,
    ZeRO-1 of the optimizer state (the layer being computed is gathered in full; not counted)."""
    n = env.processes
    return {"fsdp1": (n, n, n), "fsdp2": (n, n, n), "zero3": (n, n, n), "zero2": (1, n, n), "zero1": (1, 1, n)}.get(
        env.sharding, (1, 1, 1)
    )


def forecast_parts(shape: ModelShape, training: TrainingShape) -> dict[str, int]:
    """Bytes by part (see the module docstring)."""
    size, tokens = training.activation_bytes, training.tokens
    per_layer = 9 * shape.hidden + 2 * shape.key_value_width + 4 * shape.intermediate
    per_layer_bytes = per_layer * size + shape.lora_inputs * (size + 1)
    if training.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * size + per_layer_bytes)
    else:
        activations = tokens * shape.layers * per_layer_bytes
    activations += 3 * tokens * shape.hidden * size  # the final norm
    head = shape.vocabulary * shape.hidden * 4
    if training.chunked_loss:
        trained = math.ceil(tokens * training.trained_share)
        # a chunk's logits and their product with the hidden states, the head's gradient summed over chunks (fp32),
        # the gradient of the trained tokens' hidden states
        logits = min(CHUNK_BYTES, trained * shape.vocabulary * 4) * 2 + head + trained * shape.hidden * size
    else:  # the logits, their log-softmax, and the gradient of each in backward (fp32)
        logits = 3 * tokens * shape.vocabulary * 4
    weight_shards, gradient_shards, optimizer_shards = training.shards
    trained = shape.trainable_parameters * training.trained_bytes
    frozen = (shape.total_parameters - shape.trainable_parameters) * training.frozen_bytes
    gradients = int(trained / gradient_shards)
    return {
        "runtime": training.runtime,
        "weights": int((trained + frozen) / weight_shards),
        "optimizer": int(ADAM_STATES * trained / optimizer_shards),
        "gradients": gradients,
        "activations": activations,
        "logits": logits,
        # on CUDA AdamW updates all tensors at once (foreach), with a temporary of one value per trainable
        # parameter: the step's peak may pass backward's (activations and logits live, gradients filling in)
        "optimizer_step": max(0, gradients - activations - logits) if training.foreach_optimizer else 0,
        # on CPU glibc's heap fragments within a step (freed activations not reusable for the next sizes): measured
        # at 0-5% of the batch's memory for full fine-tuning and 20-30% with LoRA (scripts/check_memory_forecast.py,
        # with the heap trimmed after every step; kept between steps as CpuHeap does, LoRA is forecast 0.82-0.84)
        # CUDA's caching allocator reuses blocks, and max_memory_allocated counts tensors only
        "allocator": 0 if training.foreach_optimizer else (activations + logits) // 5,
    }


def forecast(
    recipe: Recipe,
    shape: ModelShape,
    lengths: list[int],
    trained_share: float,
    layout: str,
    runtime: int,
    env: Environment,
) -> MemoryForecast:
    """The forecast for `recipe` in `env` on a model of `shape` with these encoded lengths, and, when it would fill
    more than 90% of the device's memory, the cheapest recipe changes with their own forecasts."""
    t = recipe.training
    sizes = dict(
        activation_bytes=4 if env.precision == "fp32" else 2,
        foreach_optimizer=env.on_cuda,
        trained_bytes=env.weight_bytes(trainable=True),
        frozen_bytes=env.weight_bytes(trainable=False),
        shards=shards(env),
    )

    def total(batch_size: int, checkpointing: bool, chunked: bool, model: ModelShape, max_length: int) -> tuple:
        fitting = [min(n, max_length) for n in lengths]
        tokens, _ = longest_batch(fitting, batch_size, layout, max_length)
        training = TrainingShape(
            tokens=tokens,
            trained_share=trained_share,
            gradient_checkpointing=checkpointing,
            chunked_loss=chunked,
            runtime=runtime,
            **sizes,
        )
        return forecast_parts(model, training), tokens

    now = dict(
        batch_size=t.batch_size,
        checkpointing=t.gradient_checkpointing,
        chunked=env.loss in (CHUNKED, FUSED),
        model=shape,
        max_length=recipe.max_length,
    )
    parts, tokens = total(**now)
    result = MemoryForecast(parts, device_memory_bytes(runtime), tokens)
    if result.too_big:
        result.fixes = [
            (change, sum(total(**{**now, **fix})[0].values()))
            for change, fix in cheapest_fixes(recipe, shape, lengths, env)
        ]
    return result


def cheapest_fixes(recipe: Recipe, shape: ModelShape, lengths: list[int], env: Environment) -> list[tuple[str, dict]]:
    """Recipe changes that lower the peak, cheapest first (none costs quality except the last two): each as its
    recipe text and the forecast's arguments it changes."""
    t = recipe.training
    options = []
    if not t.chunked_loss and env.loss == FULL_LOGITS and not env.on_cuda and env.processes == 1:
        options.append(("training.chunked_loss: true", {"chunked": True}))
    if t.batch_size > 1:
        half = t.batch_size // 2
        change = f"training.batch_size: {half}, gradient_accumulation_steps: {t.gradient_accumulation_steps * 2}"
        options.append((change, {"batch_size": half}))
    if not t.gradient_checkpointing:
        options.append(("training.gradient_checkpointing: true", {"checkpointing": True}))
    if not recipe.lora:
        lora = dataclasses.replace(shape, trainable_parameters=lora_parameters(shape, 16))
        options.append(("lora: {r: 16}", {"model": lora}))
    ordered = sorted(lengths)
    if ordered:
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        if p99 < ordered[-1]:
            options.append((f"max_length: {p99} (99% of the examples fit)", {"max_length": p99}))
    return options


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """Adapter parameters of rank `rank` on every linear layer of a Llama-style decoder."""
    h, i, kv = shape.hidden, shape.intermediate, shape.key_value_width
    per_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    return shape.layers * per_layer


def run_forecast(
    recipe: Recipe, model, lengths: list[int], trained_share: float, runtime: int, env: Environment
) -> MemoryForecast:
    """The forecast for a run about to train `model` (loaded, or a skeleton on the meta device) in `env` on examples
    of these lengths; `runtime` is the process's resident memory before the model (counted on CPU only: CUDA's
    allocator counts tensors)."""
    from sft_cli.training.setup import layout

    shape = model_shape(model, recipe.lora.dropout if recipe.lora else 0.0)
    runtime = 0 if env.on_cuda else runtime
    return forecast(recipe, shape, lengths, trained_share, layout(recipe), runtime, env)


def recipe_forecast(recipe: Recipe, progress) -> MemoryForecast:
    """`sft validate --memory`: the forecast from the prepared data (encoded now or from the cache) and the model's
    architecture on the meta device; no weights load."""
    from sft_cli.encoding.loading import load_model_skeleton
    from sft_cli.encoding.mixing import prepare_data
    from sft_cli.training.batching import sequence_lengths
    from sft_cli.training.environment import detect
    from sft_cli.training.setup import with_adapters

    data = prepare_data(recipe, ("train",), progress=progress)
    runtime = resident_bytes()
    model = load_model_skeleton(recipe.model, len(data.tokenizer))
    env = detect(recipe, lambda: model)
    model = with_adapters(model, recipe, data.tokenizer, env)
    lengths = sequence_lengths(data.mix.train_dataset())
    return run_forecast(recipe, model, lengths, trained_share(data.mix), runtime, env)


def trained_share(mix) -> float:
    """Trained tokens / all tokens over the mix's sources (the chunked loss sends only trained tokens to the head)."""
    tokens = sum(p.tokens for p in mix.parts)
    return sum(p.trained_tokens for p in mix.parts) / tokens if tokens else 1.0


def device_memory_bytes(runtime: int) -> int | None:
    """The memory a run can use: the GPU's, or on CPU the RAM available now plus what this process holds."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024 + runtime
    except (OSError, KeyError, ValueError):
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
INT_MAX = 2**31 - 1  # mallopt takes a C int


class CpuHeap:
    """How a CPU run on glibc allocates: freed memory stays in the heap for the next step, and goes back to the
    system only when the process passes its forecast peak.

    glibc's defaults serve large tensors with fresh mmap'd pages and unmap them when freed, so every step faults in
    its activations, logits and gradients again (bundled task rows: 335,000 page faults a step, more system time
    than compute). Served from the heap and kept there, a step reuses the last step's pages: 5-6x fewer faults at
    the same peak RSS (with the chunked loss's in-place head gradient, 144 vs 105-115 tokens/s on those rows:
    scripts/bench_train.py). The heap can fragment as batch shapes change (SmolLM2-135M with LoRA, 1,024 tokens a
    step: peak RSS 3.3, 4.5, 5.3 GB over three steps without trimming), so after each optimizer step the free
    pages go back to the system (`malloc_trim`) whenever the process holds more than the forecast peak: growth
    stops at the forecast."""

    def __init__(self, libc, limit_bytes: int):
        self.libc, self.limit, self.trims = libc, limit_bytes, 0

    @classmethod
    def start(cls, limit_bytes: int) -> CpuHeap | None:
        """Keep freed memory in the heap from now on (Linux with glibc; None elsewhere: other allocators differ)."""
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            heap = cls(libc, limit_bytes) if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) else None
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            return None
        if heap is not None and not libc.mallopt(M_TRIM_THRESHOLD, INT_MAX):
            heap.stop()  # half a policy is none: the mmap threshold goes back too
            return None
        return heap

    def after_step(self) -> None:
        if resident_bytes() > self.limit:
            self.libc.malloc_trim(0)
            self.trims += 1

    def stop(self) -> None:
        """Back to glibc's default thresholds (as fixed values: glibc cannot resume adjusting them itself), and the
        held memory back to the system (the process lives on after training: saving, evaluation, tests)."""
        self.libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        self.libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        self.libc.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is absent)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def measured_peak() -> dict:
    """The peak the forecast is checked against, for run.json: CUDA's max_memory_allocated, or peak RSS on CPU."""
    import resource

    import torch

    if torch.cuda.is_available():
        return {"measured_peak_mb": round(torch.cuda.max_memory_allocated() / MB), "measured": "CUDA allocated"}
    peak = _peak_rss_of_this_program() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux
    return {"measured_peak_mb": round(peak / MB), "measured": "peak RSS"}


def _peak_rss_of_this_program() -> int | None:
    """Linux's VmHWM: the peak of this program's memory. getrusage's ru_maxrss survives exec, so a run started by
    a large process (a test session, a notebook) would report that process's size when it was larger."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_warning(result: MemoryForecast) -> str | None:
    """One line when the forecast fills more than 90% of the device's memory, with the cheapest fixes."""
    if not result.too_big:
        return None
    fixes = "; ".join(f"{change} -> {size / MB:,.0f} MB" for change, size in result.fixes)
    return (
        f"the forecast peak, {result.total / MB:,.0f} MB per process, is {result.share:.0%} of the "
        f"{result.device_memory / MB:,.0f} MB this device has; cheapest fixes first: {fixes or 'none found'}"
    )
