"""The peers' demo data layouts, written from their documented schemas (a few rows each, made up here): what users
bring from LLaMA-Factory (data/README.md: alpaca, sharegpt, the identity and glaive tool-call demos), Axolotl
(chat_template datasets), OpenAI's chat format with tool calls, and Databricks' Dolly. Each entry: the rows and the
recipe keys that read them."""

from __future__ import annotations

import json

TOOL = {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object"}}


def _alpaca(i: int) -> dict:
    return {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}


LAYOUTS: dict[str, tuple[list[dict], dict]] = {
    # LLaMA-Factory alpaca_en_demo.json: instruction / input / output
    "llama-factory-alpaca": ([_alpaca(i) for i in range(8)], {"template": "alpaca"}),
    # LLaMA-Factory identity.json: alpaca rows with {{name}} / {{author}} placeholders left in the text
    "llama-factory-identity": (
        [{"instruction": "Who are you?", "input": "", "output": f"I am {{{{name}}}}, made by {{{{author}}}} ({i})."}
         for i in range(8)],
        {"template": "alpaca"},
    ),
    # LLaMA-Factory sharegpt: conversations of {from, value}, an optional system column
    "llama-factory-sharegpt": (
        [{"conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}"}],
          "system": "Be brief."} for i in range(8)],
        {"template": "chat"},
    ),
    # LLaMA-Factory glaive_toolcall_en_demo.json: function_call and observation turns, tools as JSON text
    "llama-factory-glaive": (
        [{"conversations": [
            {"from": "human", "value": f"Weather in city {i}?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": str(i)}})},
            {"from": "observation", "value": json.dumps({"temp_c": 20 + i})},
            {"from": "gpt", "value": f"It is {20 + i} C."}],
          "tools": json.dumps([TOOL])} for i in range(8)],
        {"template": "chat"},
    ),
    # Axolotl type: chat_template, field_messages: messages, role / content
    "axolotl-chat-template": (
        [{"messages": [{"role": "system", "content": "Answer in one word."},
                       {"role": "user", "content": f"Colour number {i}?"},
                       {"role": "assistant", "content": f"Blue{i}"}]} for i in range(8)],
        {"template": "chat"},
    ),
    # OpenAI chat format: assistant tool_calls with JSON-text arguments, tool results by tool_call_id
    "openai-tool-calls": (
        [{"messages": [
            {"role": "user", "content": f"Weather in city {i}?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps({"city": str(i)})}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"temp_c": 20 + i})},
            {"role": "assistant", "content": f"It is {20 + i} C."}],
          "tools": [{"type": "function", "function": TOOL}]} for i in range(8)],
        {"template": "chat"},
    ),
    # Databricks Dolly 15k: instruction / context / response / category
    "dolly": (
        [{"instruction": f"What number follows {i}?", "context": f"Counting from {i}.", "response": str(i + 1),
          "category": "open_qa"} for i in range(8)],
        {"template": "alpaca", "columns": {"input": "context", "output": "response"}},
    ),
}  # fmt: skip
