"""The real SmolLM2-135M trains for a few steps on CPU: loaded straight from its GGUF file (dequantized, saved
as safetensors), and with LoRA + new special tokens on its tied embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES
from recipes import recipe_file

from sft_cli.recipe.schema import load_recipe
from sft_cli.training.run import train

pytestmark = pytest.mark.slow
GGUF = FIXTURES / "smollm2-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_full_finetune_from_the_gguf_file_saves_safetensors(tmp_path):
    from transformers import AutoModelForCausalLM

    assert GGUF.exists(), "run scripts/build_fixtures.py"
    path = recipe_file(tmp_path, GGUF, training={"max_steps": 3, "batch_size": 2, "learning_rate": 1e-5})
    result = train(load_recipe(path))
    assert result.stop_reason == "completed" and (result.run_dir / "model.safetensors").exists()
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["plan"]["environment"]["precision"] == "fp32" and record["tokens_per_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(result.run_dir)
    assert model.config.num_hidden_layers == 30 and getattr(model.config, "quantization_config", None) is None


def test_lora_with_special_tokens_on_tied_embeddings(tmp_path, smollm2_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = recipe_file(
        tmp_path,
        smollm2_path,
        template="special_tokens",
        lora={"r": 8, "alpha": 16},
        training={"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3},
    )
    result = train(load_recipe(path))
    run_dir = result.run_dir
    assert (run_dir / "adapter_model.safetensors").exists()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_path)
    base.resize_token_embeddings(len(tokenizer))
    before = base.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<|response|>")].clone()
    merged = PeftModel.from_pretrained(base, run_dir).merge_and_unload()
    after = merged.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<|response|>")]
    assert not torch.allclose(before, after)
