"""A recipe file as YAML with line numbers: its text (UTF-8, or one error naming the line), each key path's line,
duplicate keys, and `--set key.path=value` overrides (values read as YAML scalars)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sft_cli.errors import RecipeError


def recipe_text(path: Path) -> str:
    """The recipe's text; a file that is not UTF-8 is one error naming the line and column where decoding failed."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise RecipeError(
            str(path),
            [f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})"],
            hint="save the recipe as UTF-8 (most editors and `iconv -t UTF-8` can convert it)",
        ) from None


MAX_NODES = 100_000  # a recipe is a few hundred nodes; an "alias bomb" expands to billions


def check_aliases(node: yaml.Node | None, source: str) -> None:
    """Refuse, before anything expands them, aliases that refer to themselves or multiply a document beyond any
    recipe's size. Shared nodes are counted once per use, but each distinct node is visited once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in open_nodes:
            raise RecipeError(source, [f"line {node.start_mark.line + 1}: an alias refers to itself"])
        if key not in sizes:
            open_nodes.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            sizes[key] = 1 + sum(size(child) for child in children)
            open_nodes.discard(key)
            if sizes[key] > MAX_NODES:
                raise RecipeError(
                    source,
                    [f"line {node.start_mark.line + 1}: aliases expand this document past {MAX_NODES:,} values"],
                    hint="a recipe needs no nested aliases; write the values out",
                )
        return sizes[key]

    if node is not None:
        size(node)


def key_lines(node: yaml.Node, prefix: tuple = (), lines: dict | None = None, dupes: list | None = None):
    """Map each key path in a YAML node tree to its 1-based line; collect duplicate keys."""
    lines = {} if lines is None else lines
    dupes = [] if dupes is None else dupes
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            path = prefix + (key,)
            if key in seen:
                dupes.append(f"{'.'.join(map(str, path))} (line {key_node.start_mark.line + 1}): duplicate key")
            seen.add(key)
            lines[path] = key_node.start_mark.line + 1
            key_lines(value_node, path, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            key_lines(item, prefix + (i,), lines, dupes)
    return lines, dupes


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`a.b=c` -> (("a", "b"), c), the value read as a YAML scalar (so 1e-4 is a number, true a bool)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise RecipeError("--set", [f"{text!r}: expected key.path=value, e.g. training.learning_rate=1e-4"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return tuple(key.strip().split(".")), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> set[tuple]:
    """Apply `--set` overrides in place; returns the key paths they touched. A number indexes a list, e.g.
    `data.sources.0.weight=0.5`."""
    touched = set()
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        where: tuple = ()
        for part in path[:-1]:
            key, child = _child(node, part, text)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, (dict, list)):
                raise RecipeError("--set", [f"{text!r}: {part} is not a section"])
            node, where = child, (*where, key)
        key, _ = _child(node, path[-1], text)
        node[key] = value
        touched.add((*where, key))
    return touched


def _child(node: dict | list, part: str, text: str) -> tuple[Any, Any]:
    """(key, current value) of `part` in a mapping, or in a list by its index."""
    if isinstance(node, dict):
        return part, node.get(part)
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError("--set", [f"{text!r}: {part} is not an index of the list (0 to {len(node) - 1})"])
    return int(part), node[int(part)]
