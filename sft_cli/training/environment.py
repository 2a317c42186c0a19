"""The run's environment, decided in one place before any weight loads: the device, the precision and the dtypes
weights are kept in, the processes and their sharding, the attention kernel and the loss.

`decide` is a pure function of the recipe, the hardware (`device.Hardware`), the launch (read from the launcher's
environment variables) and a few facts of the model's architecture (read from its skeleton on the meta device), so
tests/training/test_environment.py fixes its whole table without a GPU. Every stage reads the result: the model loads in
`load_dtype` with `attention`, the trainer runs `loss`, the memory forecast counts its bytes, and the plan,
`sft train --dry-run` and run.json show it with `notes` saying why each fallback was taken.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sft_cli.device import Hardware
from sft_cli.errors import SftError
from sft_cli.recipe.schema import Recipe
from sft_cli.training.attention import VARLEN, own_attention

FUSED, CHUNKED, FULL_LOGITS = "TRL fused LM head", "chunked", "full logits"
SHARDED = ("fsdp1", "fsdp2", "zero3")  # every rank holds a shard of the weights


@dataclass(frozen=True)
class Launch:
    """How this process was started: alone, or as one of several (torchrun / accelerate launch)."""

    processes: int = 1
    rank: int = 0
    sharding: str = "none"  # none | ddp | fsdp1 | fsdp2 | zero1 | zero2 | zero3

    @property
    def launched(self) -> bool:
        return self.processes > 1 or self.sharding != "none"


def detect_launch(environ: Mapping[str, str] = os.environ) -> Launch:
    """From the variables torchrun and `accelerate launch` set (accelerate/utils/launch.py)."""
    processes = int(environ.get("WORLD_SIZE", "1"))
    if environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        sharding = "fsdp" + environ.get("FSDP_VERSION", "1")
    elif environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        sharding = "zero" + environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    else:
        sharding = "ddp" if processes > 1 else "none"
    return Launch(processes, int(environ.get("RANK", "0")), sharding)


@dataclass(frozen=True)
class ModelFacts:
    """What the decision needs of the model's architecture (a skeleton on the meta device is enough)."""

    kind: str = "model"  # its class name
    loaded_attention: str = "sdpa"  # what transformers picks for it by default
    supports_flash: bool = True
    own_attention: str | None = None  # why its attention is more than causal softmax (soft-capping, sinks)
    plain_head: bool = True  # its logits are the LM head's product (the chunked loss applies)


def model_facts(model) -> ModelFacts:
    from sft_cli.training.chunked_loss import head_of

    return ModelFacts(
        kind=type(model).__name__,
        loaded_attention=model.config._attn_implementation,
        supports_flash=bool(getattr(model, "_supports_flash_attn", False)),
        own_attention=own_attention(model),
        plain_head=head_of(model) is not None,
    )


@dataclass(frozen=True)
class Environment:
    device: str
    gpus: int  # visible to each process
    processes: int
    rank: int
    sharding: str
    precision: str  # what the forward and backward compute in: fp32 | bf16 | fp16
    trained_weights: str  # the dtype trainable weights are kept and updated in
    frozen_weights: str  # the dtype of the weights that do not train (LoRA's base): fp32 | bf16 | nf4
    attention: str
    loss: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def on_cuda(self) -> bool:
        return self.gpus > 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def load_dtype(self) -> str:
        """The torch dtype name the model loads in (the 4-bit base's other modules too)."""
        return "bfloat16" if "bf16" in (self.frozen_weights, self.trained_weights) else "float32"

    def weight_bytes(self, trainable: bool) -> float:
        """Bytes per parameter, for the memory forecast."""
        kind = self.trained_weights if trainable else self.frozen_weights
        return {"fp32": 4, "bf16": 2, "nf4": 0.55}[kind]  # nf4: half a byte, plus its double-quantized scales

    def summary(self) -> str:
        """One line for the start of a run."""
        processes = f"{self.processes} processes ({self.sharding})" if self.processes > 1 else "1 process"
        return f"{self.device} | {processes} | {self.precision} ({self.trained_weights} weights) | {self.attention}"

    def as_dict(self) -> dict:
        return {**self.__dict__, "notes": list(self.notes)}


def check_runnable(recipe: Recipe, hardware: Hardware) -> None:
    """Refuse what this hardware cannot run at all, before any model file is read: fp16 and QLoRA need a CUDA GPU,
    QLoRA bitsandbytes."""
    if not hardware.gpus and recipe.training.precision == "fp16":
        raise SftError("training.precision: fp16 needs a CUDA GPU", hint="use precision: auto (fp32 on CPU)")
    if recipe.lora and recipe.lora.load_in_4bit:
        if not hardware.gpus:
            raise SftError("lora.load_in_4bit (QLoRA) needs a CUDA GPU", hint="set lora.load_in_4bit: false on CPU")
        if not hardware.bitsandbytes:
            raise SftError("lora.load_in_4bit needs bitsandbytes", hint="pip install bitsandbytes")


def decide(recipe: Recipe, hardware: Hardware, launch: Launch, model: ModelFacts) -> Environment:
    """The whole decision (see the module docstring); raises SftError for what this hardware cannot run."""
    check_runnable(recipe, hardware)
    notes: list[str] = []
    precision = choose_precision(recipe.training.precision, hardware, notes)
    trained, frozen = choose_weights(recipe, precision, launch, notes)
    return Environment(
        device=f"cuda ({hardware.name})" if hardware.gpus else "cpu",
        gpus=hardware.gpus,
        processes=launch.processes,
        rank=launch.rank,
        sharding=launch.sharding,
        precision=precision,
        trained_weights=trained,
        frozen_weights=frozen,
        attention=choose_attention(recipe, hardware, precision, model, notes),
        loss=choose_loss(recipe, hardware, launch, model, notes),
        notes=tuple(notes),
    )


def choose_precision(requested: str, hardware: Hardware, notes: list[str]) -> str:
    """bf16 on GPUs that run it natively, fp16 on older GPUs, fp32 on CPU (bf16 is ~8x slower there). An explicit
    choice is honoured where the hardware can run it."""
    if not hardware.gpus:
        if requested == "bf16":
            notes.append("bf16 on CPU: autocast, about 8x slower than fp32 here")
        return "fp32" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if hardware.native_bf16 else "fp16"
    if requested == "bf16" and not hardware.native_bf16:
        notes.append(f"bf16 is emulated on {hardware.name} (slow): precision auto picks fp16 there")
    return requested


def choose_weights(recipe: Recipe, precision: str, launch: Launch, notes: list[str]) -> tuple[str, str]:
    """(trained, frozen) dtypes. Full fine-tuning keeps fp32 master weights whatever the precision: bf16 has 8
    mantissa bits, so an AdamW step smaller than 1/256 of a weight rounds away (3 steps at lr 2e-5 changed 30% of
    a model's weights in bf16, all of them in fp32). LoRA's frozen base may be bf16 (it is never updated); its
    adapters stay fp32 (PEFT's default), except under ZeRO-3, which needs one dtype for all its parameters."""
    lora = recipe.lora
    if not lora:
        if precision != "fp32":
            notes.append(f"full fine-tuning: fp32 master weights under {precision} autocast")
        return "fp32", "fp32"
    if lora.load_in_4bit:
        notes.append("QLoRA: TRL keeps the adapters in bf16 over the 4-bit (nf4) base")
        return "bf16", "nf4"
    if precision != "bf16":
        return "fp32", "fp32"
    if launch.sharding == "zero3":
        notes.append("ZeRO-3 with LoRA: adapters kept in bf16 like the base (ZeRO-3 gathers one dtype)")
        return "bf16", "bf16"
    return "fp32", "bf16"


def choose_attention(recipe: Recipe, hardware: Hardware, precision: str, model: ModelFacts, notes: list[str]) -> str:
    """Padding-free and packed batches need attention that keeps sequences apart: flash-attention's varlen kernel
    where it can run, else sft's per-sequence kernel; models whose attention is more than causal softmax keep their
    own, with transformers' packed mask. Padded batches keep the model's default."""
    if not recipe.training.padding_free:
        return model.loaded_attention
    return padding_free_attention(hardware, precision, model, notes)


def padding_free_attention(hardware: Hardware, precision: str, model: ModelFacts, notes: list[str]) -> str:
    """The kernel for a batch of sequences laid end to end (see choose_attention)."""
    if model.own_attention:
        notes.append(f"{model.kind} keeps its own attention ({model.own_attention}) with transformers' packed mask")
        return model.loaded_attention
    blockers = flash_blockers(hardware, precision, model)
    if not blockers:
        return "flash_attention_2"
    if hardware.gpus:
        notes.append(f"flash_attention_2 not used: {'; '.join(blockers)}; {VARLEN} keeps sequences apart instead")
    return VARLEN


def flash_blockers(hardware: Hardware, precision: str, model: ModelFacts) -> list[str]:
    """Every reason flash-attention 2 cannot run this model here (empty: it can)."""
    if not hardware.gpus:
        return ["no CUDA GPU"]
    blockers = []
    if hardware.capability < (8, 0):
        blockers.append(
            f"it needs compute capability 8.0+, {hardware.name} has {'.'.join(map(str, hardware.capability))}"
        )
    if precision == "fp32":
        blockers.append("it runs in bf16 or fp16 only, the precision is fp32")
    if not model.supports_flash:
        blockers.append(f"{model.kind} does not support it")
    if hardware.flash_attn:
        blockers.append(hardware.flash_attn)
    return blockers


def choose_loss(recipe: Recipe, hardware: Hardware, launch: Launch, model: ModelFacts, notes: list[str]) -> str:
    """On CUDA, TRL's fused LM head (never the full logits). On CPU the chunked loss (trained tokens only) where the
    logits are the head's product and one process runs (DDP marks a parameter ready once per backward, and the
    head's weight is used past its forward); else the model's own loss over the full logits."""
    if hardware.gpus:
        return FUSED
    if not recipe.training.chunked_loss:
        return FULL_LOGITS
    if launch.processes > 1:
        notes.append("chunked loss off under several processes (DDP): full logits")
        return FULL_LOGITS
    if not model.plain_head:
        notes.append(f"chunked loss off: {model.kind}'s logits are more than its head's product")
        return FULL_LOGITS
    return CHUNKED


def detect(recipe: Recipe, model_skeleton: Callable[[], object]) -> Environment:
    """The decision for this process and this machine; `model_skeleton` gives the model (a skeleton on the meta
    device is enough), read only once the hardware can run the recipe at all."""
    from sft_cli.device import detect_hardware

    hardware = detect_hardware()
    check_runnable(recipe, hardware)
    return decide(recipe, hardware, detect_launch(), model_facts(model_skeleton()))


def processes_to_start(gpus: int, launch: Launch, requested: int | None) -> int:
    """How many processes `sft train` starts: what --num-processes asks; without it, one per visible GPU when
    several are (one process would leave all but one idle: transformers' Trainer would wrap the model in
    nn.DataParallel, which TRL refuses). A process already started by a launcher runs where it is."""
    if launch.launched:
        return 1
    if requested is not None:
        return requested
    return max(1, gpus)
