"""The language-model loss without the full logits: cross-entropy through the LM head over the trained tokens only,
a chunk of them at a time, forward and backward together.

Today's loss materialises logits for every token (tokens x vocabulary: 151,936 columns for Qwen models), upcasts
them, and keeps the softmax for backward: for small models with large vocabularies that is most of the peak memory.
Here the model runs with its LM head passed through (its output is the final hidden state); then, for each chunk
of trained positions, the chunk's logits, their log-sum-exp, the loss and the gradients with respect to the hidden
states and the head's weight are computed at once, and the chunk's logits are freed. Backward only scales the
stored gradients. Positions that train nothing (the prompt under masked loss) never reach the LM head at all, so
the head costs in proportion to the trained tokens instead of all tokens.

The loss is the one transformers computes (`ForCausalLMLoss`: labels shifted by one, summed over trained tokens,
divided by `num_items_in_batch` when the trainer gives it, else averaged), tested equal to it, with equal
gradients, to 1e-5 in fp32. Models whose logits are more than `lm_head(hidden)` (soft-capping, logit scaling) keep
the full-logits loss.
"""

from __future__ import annotations

import contextlib

import torch

IGNORE = -100
CHUNK_ELEMENTS = 2**25  # logits elements per chunk: 128 MB in fp32 (442 rows at 151,936 columns)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def head_of(model):
    """The LM head (a bias-free Linear) of a causal LM, PEFT-wrapped or not, or None when its logits are more than
    the head's product (soft-capping, scaling) and the chunked loss does not apply."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    config = getattr(inner, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return head


@contextlib.contextmanager
def hidden_states_out(head: torch.nn.Linear):
    """While inside, the head passes its input through: the model's `logits` are its final hidden states."""
    head.forward = _identity
    try:
        yield
    finally:
        del head.forward  # the class's own forward again


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `labels`, chunk by chunk; also the count of argmax hits."""

    @staticmethod
    def forward(ctx, hidden, weight, labels):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None  # vocabulary x width: the first chunk's product, then each next one added in place
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            h, y = hidden[start : start + rows], labels[start : start + rows]
            logits = (h @ weight.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(-1) == y).sum()
            logits.sub_(lse[:, None]).exp_()  # the softmax, in place: d(sum of losses)/d(logits) once y is subtracted
            logits[torch.arange(len(y), device=y.device), y] -= 1
            grad_hidden[start : start + rows] = (logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if weight.requires_grad:
                h32 = h.float()
                grad_weight = logits.T @ h32 if grad_weight is None else grad_weight.addmm_(logits.T, h32)
            del logits
        if weight.requires_grad and grad_weight is None:  # no trained token in the batch
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        ctx.has_weight_grad = grad_weight is not None
        ctx.backward_done = False
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        if ctx.backward_done:  # the stored gradients are scaled in place below: a second backward would be wrong
            raise RuntimeError("the chunked loss supports one backward pass per forward (no retain_graph)")
        ctx.backward_done = True
        grad_hidden, grad_weight = ctx.saved_tensors
        # in place: a fresh vocabulary x width tensor every step costs a fill and its page faults on CPU
        weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype) if ctx.has_weight_grad else None
        return grad_hidden.mul_(grad_total.to(grad_hidden.dtype)), weight, None


def chunked_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, num_items_in_batch=None):
    """(loss, trained token count, correct argmax count) as transformers' causal-LM loss computes the loss from
    `head(hidden)`: `hidden` [batch, tokens, width] are the final hidden states, `labels` unshifted."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    trained = shifted != IGNORE
    selected = hidden[trained]
    targets = shifted[trained]
    total, correct = _LinearCrossEntropy.apply(selected, head.weight, targets)
    count = targets.numel()
    if num_items_in_batch is not None:
        loss = total / num_items_in_batch
    else:
        loss = total / max(count, 1)
    return loss, count, correct
