"""What the accelerator can do, asked one way everywhere (torch imported lazily)."""

from __future__ import annotations


def native_bf16() -> bool:
    """A CUDA GPU that runs bf16 in hardware (Ampere or newer). torch's plain `is_bf16_supported()` also says yes
    where bf16 is only emulated (T4, V100), where training in it is slow and fp16 is the right choice."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
