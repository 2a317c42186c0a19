"""Model families for the chat tests: each family's official chat template (tests/chat_templates/, origin in
SOURCES.md) on a local tokenizer that has the family's special tokens, BOS/EOS and generation eos ids.

The vocabulary underneath is the tiny fixture's byte-level BPE; what the tests check (which text is trained, which
ids precede it) depends on the template and the control tokens, which are the family's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # file in tests/chat_templates
    bos: str | None
    eos: str
    special: tuple[str, ...]  # added as special tokens
    stops: tuple[str, ...]  # generation_config.json eos ids, as tokens
    added: tuple[str, ...] = ()  # added, not special (Qwen's <think>, <tool_call>)
    notes: dict = field(default_factory=dict)


FAMILIES = {
    f.name: f
    for f in [
        Family(
            "qwen2.5",
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            None,
            "<|im_end|>",
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
            ("<|im_end|>", "<|endoftext|>"),
            ("<tool_call>", "</tool_call>"),
        ),
        Family(
            "qwen3",
            "Qwen-Qwen3-0.6B.jinja",
            None,
            "<|im_end|>",
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
            ("<|im_end|>", "<|endoftext|>"),
            ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        ),
        Family(
            "llama3.1",
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            "<|begin_of_text|>",
            "<|eot_id|>",
            (
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<|eom_id|>",
                "<|python_tag|>",
            ),
            ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        ),
        Family(
            "gemma2",
            "google-gemma-2-2b-it.jinja",
            "<bos>",
            "<eos>",
            ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
            ("<eos>", "<end_of_turn>"),
        ),
        Family(
            "mistral-nemo",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            "<s>",
            "</s>",
            (
                "<s>",
                "</s>",
                "[INST]",
                "[/INST]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_CALLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
            ),
            ("</s>",),
        ),
        Family(
            "phi3.5",
            "microsoft-Phi-3.5-mini-instruct.jinja",
            "<s>",
            "<|endoftext|>",
            ("<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            ("<|end|>", "<|assistant|>", "<|endoftext|>"),
        ),
        Family(
            "gpt-oss",
            "openai-gpt-oss-120b.jinja",
            "<|startoftext|>",
            "<|return|>",
            (
                "<|startoftext|>",
                "<|endoftext|>",
                "<|start|>",
                "<|end|>",
                "<|message|>",
                "<|channel|>",
                "<|return|>",
                "<|call|>",
                "<|constrain|>",
            ),
            ("<|return|>", "<|endoftext|>", "<|call|>"),
        ),
        Family(
            "deepseek-r1",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            (
                "<｜begin▁of▁sentence｜>",
                "<｜end▁of▁sentence｜>",
                "<｜User｜>",
                "<｜Assistant｜>",
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁calls▁end｜>",
                "<｜tool▁call▁begin｜>",
                "<｜tool▁call▁end｜>",
                "<｜tool▁sep｜>",
                "<｜tool▁outputs▁begin｜>",
                "<｜tool▁outputs▁end｜>",
                "<｜tool▁output▁begin｜>",
                "<｜tool▁output▁end｜>",
            ),
            ("<｜end▁of▁sentence｜>",),
            ("<think>", "</think>"),
        ),
        Family(
            "apertus",
            "Apertus-8B-Instruct.jinja",
            "<s>",
            "<|assistant_end|>",
            (
                "<s>",
                "<|system_start|>",
                "<|system_end|>",
                "<|developer_start|>",
                "<|developer_end|>",
                "<|user_start|>",
                "<|user_end|>",
                "<|assistant_start|>",
                "<|assistant_end|>",
                "<|inner_prefix|>",
                "<|inner_suffix|>",
                "<|tools_prefix|>",
                "<|tools_suffix|>",
            ),
            # generation stops after a tool call too, so the caller can run it (the tool output follows in the
            # same assistant block)
            ("<|assistant_end|>", "<|tools_suffix|>"),
        ),
        Family(
            "qwq",
            "Qwen-QwQ-32B.jinja",
            None,
            "<|im_end|>",
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
            ("<|im_end|>", "<|endoftext|>"),
            ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        ),
        Family(
            "deepseek-v3.1",
            "deepseek-ai-DeepSeek-V3.1.jinja",
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            (
                "<｜begin▁of▁sentence｜>",
                "<｜end▁of▁sentence｜>",
                "<｜User｜>",
                "<｜Assistant｜>",
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁calls▁end｜>",
                "<｜tool▁call▁begin｜>",
                "<｜tool▁call▁end｜>",
                "<｜tool▁sep｜>",
                "<｜tool▁output▁begin｜>",
                "<｜tool▁output▁end｜>",
            ),
            ("<｜end▁of▁sentence｜>",),
            ("<think>", "</think>"),
        ),
        Family(
            "granite3.3",
            "ibm-granite-granite-3.3-2B-Instruct.jinja",
            "<|end_of_text|>",
            "<|end_of_text|>",
            (
                "<|start_of_role|>",
                "<|end_of_role|>",
                "<|end_of_text|>",
                "<|tool_call|>",
                "<|start_of_cite|>",
                "<|end_of_cite|>",
            ),
            ("<|end_of_text|>",),
        ),
        Family(
            "command-r7b",
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
            "<BOS_TOKEN>",
            "<|END_OF_TURN_TOKEN|>",
            (
                "<BOS_TOKEN>",
                "<|START_OF_TURN_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
                "<|SYSTEM_TOKEN|>",
                "<|USER_TOKEN|>",
                "<|CHATBOT_TOKEN|>",
                "<|START_RESPONSE|>",
                "<|END_RESPONSE|>",
                "<|START_THINKING|>",
                "<|END_THINKING|>",
                "<|START_ACTION|>",
                "<|END_ACTION|>",
                "<|START_TOOL_RESULT|>",
                "<|END_TOOL_RESULT|>",
            ),
            ("<|END_OF_TURN_TOKEN|>",),
        ),
        Family(
            "smollm3",
            "HuggingFaceTB-SmolLM3-3B.jinja",
            None,
            "<|im_end|>",
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
            ("<|im_end|>", "<|endoftext|>"),
            ("<think>", "</think>"),
        ),
    ]
}


def build_family_tokenizer(family: Family, base: Path, target: Path) -> Path:
    """A tokenizer folder for `family` (and its generation_config.json), from the tiny fixture's vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(list(family.special), special_tokens=True)
    if family.added:
        tokenizer.add_tokens(list(family.added), special_tokens=False)
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.chat_template = (TEMPLATES / family.template).read_text(encoding="utf-8")
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(target)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in family.stops]
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}), encoding="utf-8")
    return target


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}

CHATS = {
    "single": {
        "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    },
    "multi": {
        "messages": [
            {"role": "user", "content": "Capital of Japan?"},
            {"role": "assistant", "content": "Tokyo."},
            {"role": "user", "content": "And of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
            {"role": "assistant", "content": "Rome."},
        ]
    },
    "system": {
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of Japan?"},
            {"role": "assistant", "content": "Tokyo."},
            {"role": "user", "content": "And of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    "reasoning": {
        "messages": [
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "reasoning_content": "12 plus 30 is 42.", "content": "42"},
            {"role": "user", "content": "And doubled?"},
            {"role": "assistant", "reasoning_content": "42 times 2 is 84.", "content": "84"},
        ]
    },
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call12345",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp_c": 21}'},
            {"role": "assistant", "content": "It is 21 C in Paris."},
        ],
    },
}
