"""What the machine's accelerator can do, asked one way everywhere (torch imported lazily)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """The facts a run's environment is decided from (detected once; tests build them by hand)."""

    gpus: int = 0  # CUDA devices visible to this process
    name: str = "cpu"
    capability: tuple[int, int] = (0, 0)  # CUDA compute capability of the first GPU
    native_bf16: bool = False  # bf16 in hardware (Ampere or newer), not emulated
    flash_attn: str | None = "no CUDA GPU"  # why the flash_attn package cannot run here; None when it can
    bitsandbytes: bool = False  # QLoRA's 4-bit kernels installed


def native_bf16() -> bool:
    """A CUDA GPU that runs bf16 in hardware (Ampere or newer). torch's plain `is_bf16_supported()` also says yes
    where bf16 is only emulated (T4, V100), where training in it is slow and fp16 is the right choice."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def flash_attn_problem() -> str | None:
    """Why flash-attention's package cannot be used here (not installed, or a build that does not load against
    this torch), or None. Imported, not only looked up: a mismatched build fails at import."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        return "the flash_attn package is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # an ABI mismatch raises ImportError, OSError or RuntimeError
        return f"flash_attn does not import ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return None


def detect_hardware() -> Hardware:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return Hardware()
    return Hardware(
        gpus=torch.cuda.device_count(),
        name=torch.cuda.get_device_name(0),
        capability=tuple(torch.cuda.get_device_capability(0)),
        native_bf16=native_bf16(),
        flash_attn=flash_attn_problem(),
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
    )
