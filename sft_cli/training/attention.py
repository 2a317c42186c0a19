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

VARLEN = "sft_varlen"  # the per-sequence kernel's name in transformers' attention registry


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
    bounds = sequence_bounds(cu_seq_lens_q)
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


def sequence_bounds(cu_seq_lens) -> list[int]:
    """The boundaries as Python ints, read from the device once per batch: every layer (and the recompute under
    gradient checkpointing) gets the same tensor, and each read of a CUDA tensor waits for the GPU. Kept on the
    tensor itself, so it lives exactly as long as the batch."""
    bounds = getattr(cu_seq_lens, "_sft_bounds", None)
    if bounds is None:
        bounds = cu_seq_lens.tolist()
        cu_seq_lens._sft_bounds = bounds
    return bounds


def _no_mask(*args, **kwargs):
    return None  # sequence boundaries travel in cu_seq_lens_q; a dense mask would be T^2 for nothing


def register() -> None:
    """Make `sft_varlen` a name transformers accepts for `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _no_mask)


def own_attention(model) -> str | None:
    """Why the model's attention is more than causal softmax (soft-capping, sinks), so it keeps its own kernel;
    None when sft's per-sequence kernel computes the same."""
    config = model.config.get_text_config()
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_attn_softcapping", None):
        return "logit soft-capping"
    if any(name.endswith(".sinks") or name == "sinks" for name, _ in model.named_parameters()):
        return "attention sinks"
    return None


def use_attention(model, name: str) -> None:
    """Switch `model` to `name`: the attention the run's environment chose (environment.choose_attention), or back
    to the one it was loaded with before saving (a saved model must not need sft's kernel)."""
    if name == VARLEN:
        register()
    if model.config._attn_implementation != name:
        model.set_attn_implementation(name)
