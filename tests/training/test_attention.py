"""Padding-free batches never let one sequence see another: the logits of every sequence in a batch equal its
logits run alone, for sft's per-sequence attention and for the models' own sdpa/eager with the packed mask."""

from __future__ import annotations

import pytest
import torch

from sft_cli.device import detect_hardware
from sft_cli.training.attention import VARLEN, register, use_attention
from sft_cli.training.batching import Collator
from sft_cli.training.environment import model_facts, padding_free_attention

LENGTHS = [7, 19, 3, 12, 1]


def sequences(vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for row, n in enumerate(LENGTHS):
        ids = torch.randint(4, vocab, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": ids, "row": row})
    return out


def load(path, attention: str, **config):
    from transformers import AutoConfig, AutoModelForCausalLM

    if attention == VARLEN:
        register()
    if config:  # a variant of the tiny model's architecture, random weights
        base = AutoConfig.from_pretrained(path).to_dict()
        cfg = AutoConfig.for_model(**{**base, **config, "attn_implementation": attention})
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg).eval()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()


def assert_each_sequence_alone(model, examples, tolerance: float = 1e-5, **call):
    """Logits of the padding-free batch vs each sequence alone, the latter with eager attention (plain math, the
    model's own causal and sliding-window masks) on the same weights and device."""
    batch = Collator(pad_token_id=0, padding_free=True)(examples)
    inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    attention = model.config._attn_implementation
    with torch.no_grad():
        packed = model(**inputs, **call).logits[0]
        model.set_attn_implementation("eager")
        start = 0
        for example in examples:
            n = len(example["input_ids"])
            alone = model(input_ids=torch.tensor([example["input_ids"]], device=model.device), use_cache=False)
            gap = (packed[start : start + n] - alone.logits[0]).abs().max()
            assert gap < tolerance, (example["row"], gap)
            start += n
    model.set_attn_implementation(attention)


@pytest.mark.parametrize("attention", [VARLEN, "sdpa", "eager"])
def test_padding_free_logits_equal_each_sequence_alone(tiny_path, attention):
    model = load(tiny_path, attention)
    # use_cache=False as TRL's trainer passes it: transformers' packed mask needs it
    assert_each_sequence_alone(model, sequences(model.config.vocab_size), use_cache=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path runs where a GPU is")
def test_on_cuda_the_attention_sft_picks_keeps_sequences_apart(tiny_path):
    """On a GPU: flash-attention's varlen kernel where `flash-attn` is installed, else sft's per-sequence loop."""
    model = load(tiny_path, "sdpa").to("cuda")
    tolerance = 1e-4
    name = padding_free_attention(detect_hardware(), "bf16", model_facts(model), [])
    use_attention(model, name)
    if name == "flash_attention_2":  # a 16-bit kernel: the model trains in bf16 there
        model, tolerance = model.to(torch.bfloat16), 5e-2
    assert_each_sequence_alone(model, sequences(model.config.vocab_size), tolerance=tolerance)


def test_sequence_attention_is_right_even_with_the_cache_on(tiny_path):
    """transformers' packed mask is only built without a cache; sft's attention does not depend on it."""
    model = load(tiny_path, VARLEN)
    assert_each_sequence_alone(model, sequences(model.config.vocab_size))


def test_sliding_window_is_kept_inside_each_sequence(tiny_path):
    model = load(tiny_path, VARLEN, model_type="mistral", sliding_window=5, architectures=["MistralForCausalLM"])
    assert model.config.sliding_window == 5 < max(LENGTHS)  # the window matters for the longer sequences
    assert_each_sequence_alone(model, sequences(model.config.vocab_size))


def test_switch_and_restore(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    loaded = model.config._attn_implementation
    use_attention(model, VARLEN)
    assert model.config._attn_implementation == VARLEN
    use_attention(model, loaded)
    assert model.config._attn_implementation == loaded


def test_the_boundaries_are_read_once_per_forward_not_once_per_layer(tiny_path, monkeypatch):
    """Each read of a CUDA tensor waits for the GPU: the per-sequence kernel reads the batch's boundaries once."""
    model = load(tiny_path, VARLEN)
    assert model.config.num_hidden_layers > 1
    batches = [Collator(pad_token_id=0, padding_free=True)(sequences(model.config.vocab_size)) for _ in range(2)]
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(tuple(t.shape)) or real(t))
    for done, batch in enumerate(batches, start=1):
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
        assert reads == [(len(LENGTHS) + 1,)] * done, reads  # a new batch's boundaries are read again
