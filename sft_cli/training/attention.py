"""Attention for padding-free batches: each sequence attends only to itself.

transformers builds a block-diagonal mask from restarting `position_ids`, but only when the model runs without a
cache (TRL's trainer passes `use_cache=False`; a model called with its default cache lets later sequences attend to
earlier ones), and that mask is dense: attention over a padding-free batch of T tokens costs T^2 whatever the
sequences' lengths. `sft_varlen` instead runs causal attention on each sequence alone, from the boundaries the
collator sends (`cu_seq_lens_q`), so the cost is the sum of the squared lengths and no position can see another
sequence by construction, cache or not. On CUDA with flash-attention installed its varlen kernel does the same.

Models whose attention needs more than causal (+ sliding window) softmax attention (logit soft-capping as in Gemma 2,
attention sinks as in gpt-oss) keep their own implementation, with transformers' packed mask.
"""

from __future__ import annotations

VARLEN = "sft_varlen"


def varlen_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    sliding_window=None,
    cu_seq_lens_q=None,
    **kwargs,
):
    """Causal attention per sequence; query/key/value are (1, heads, tokens, dim) for a padding-free batch."""
    import torch
    import torch.nn.functional as F

    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise RuntimeError("sft_varlen attention needs a padding-free batch with cu_seq_lens_q (sft's collator)")
    window = sliding_window or getattr(module, "sliding_window", None)  # a keyword (Mistral) or the layer's own
    groups = query.shape[1] // key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        mask = None
        if window and end - start > window:  # a position sees itself and the window - 1 before it
            i = torch.arange(end - start, device=query.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        outputs.append(
            F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout, scale=scaling, enable_gqa=groups > 1
            )
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None  # sequence boundaries travel in cu_seq_lens_q; a dense mask would be T^2 for nothing


def register() -> None:
    """Make `sft_varlen` a name transformers accepts for `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _no_mask)


def needs_own_attention(model) -> bool:
    """True where the model's attention is more than causal softmax (soft-capping, sinks): keep its own kernel."""
    config = model.config.get_text_config()
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_attn_softcapping", None):
        return True
    return any(name.endswith(".sinks") or name == "sinks" for name, _ in model.named_parameters())


def use_sequence_attention(model) -> str:
    """Switch `model` to the attention padding-free batches need; returns the implementation now in use."""
    import importlib.util

    import torch

    if needs_own_attention(model):
        return model.config._attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        name = "flash_attention_2"
    else:
        register()
        name = VARLEN
    model.set_attn_implementation(name)
    return name


def restore_attention(model, name: str) -> None:
    """Back to the implementation the model was loaded with (saved configs and generation must not need sft)."""
    if model.config._attn_implementation != name:
        model.set_attn_implementation(name)
