"""Token-level facts of a tokenizer that templates and encoding share: which tokens stop generation, which tokens
row text must never produce, and the one way text is tokenized (with row literals of control tokens kept as text).

A "piece" is tokenized either at the start of an example (`middle=False`) or in the middle of one. A middle piece is
tokenized after a newline that is then removed, so SentencePiece tokenizers add no prefix space there (the same
trick transformers uses in `encode_marked_chat`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sft_cli.hub import hub_unreachable


def _generation_config_eos(name_or_path: str) -> list[int] | None:
    """The eos ids of the model's generation_config.json (local folder, or the hub with internet), if it has one."""
    local = Path(name_or_path) / "generation_config.json"
    try:
        if local.is_file():
            config = json.loads(local.read_text(encoding="utf-8"))
        elif Path(name_or_path).is_dir() or not name_or_path:
            return None  # a local model folder without one
        else:
            from transformers.utils import cached_file

            found = cached_file(
                name_or_path,
                "generation_config.json",
                local_files_only=hub_unreachable() is not None,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            if not found:
                return None
            config = json.loads(Path(found).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    eos = config.get("eos_token_id")
    if eos is None:
        return None
    return [eos] if isinstance(eos, int) else [int(i) for i in eos]


def stop_tokens(tokenizer) -> tuple[str, ...]:
    """Tokens that end a generated turn, from the model's own files: the tokenizer's EOS and the generation
    config's eos ids (e.g. `<|eot_id|>`, gpt-oss's `<|return|>` and `<|call|>`); without a generation config, the
    control token the model's chat template writes right after an assistant's answer. Never a guess from another
    family: gpt-oss's `<|end|>` closes a reasoning channel, while it ends Phi's turns."""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    eos_ids = _generation_config_eos(getattr(tokenizer, "name_or_path", "") or "")
    if eos_ids is not None:
        found += [tokenizer.convert_ids_to_tokens(i) for i in eos_ids if 0 <= i < len(tokenizer)]
    else:
        found += _template_turn_end(tokenizer)
    return tuple(dict.fromkeys(t for t in found if t))


PROBE_ANSWER = "sft probe answer"


def _template_turn_end(tokenizer) -> list[str]:
    """The control token the chat template writes after an assistant's answer: as the conversation's last turn,
    else (templates that close a turn only when the conversation goes on, like Apertus) before the next user
    turn."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    specials = sorted(
        {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(tokenizer.all_special_tokens),
        key=len,
        reverse=True,
    )
    chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": PROBE_ANSWER}]
    for messages in (chat, chat + [{"role": "user", "content": "Next."}]):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template that refuses the probe: no end of turn known beyond EOS
            return []
        after = text.partition(PROBE_ANSWER)[2].lstrip()
        found = next((t for t in specials if t and after.startswith(t)), None)
        if found:
            return [found]
    return []


def control_tokens(tokenizer) -> tuple[str, ...]:
    """Tokens that row text must not produce: special tokens, and added tokens the chat template writes itself
    (Qwen's `<tool_call>`); whitespace tokens are left out. Longest first, so a token wins over its parts."""
    template = getattr(tokenizer, "chat_template", None) or ""
    literals = _template_literals(template) if template else ""
    found = set(tokenizer.all_special_tokens)
    for token in tokenizer.added_tokens_decoder.values():
        if token.special or (token.content in literals and not token.content.isspace()):
            found.add(token.content)
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def _template_literals(template: str) -> str:
    """The literal text and string constants of a Jinja template, joined by NULs (no match across two)."""
    import jinja2
    import jinja2.nodes

    try:
        ast = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return template
    literals = {n.data for n in ast.find_all(jinja2.nodes.TemplateData)}
    literals |= {n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
    return "\0".join(literals)


@dataclass(frozen=True)
class Piece:
    """Text to tokenize. `literals`: (start, end) ranges inside it that are tokenized as plain text even when they
    spell a control token. `middle`: the piece does not start the example."""

    text: str
    middle: bool = False
    literals: tuple[tuple[int, int], ...] = ()


def tokenize_pieces(tokenizer, pieces: list[Piece], offsets: bool = True):
    """(ids, character offsets) of each piece, batched; offsets are empty unless asked for (only truncation needs
    them). A piece with literals is cut around them; each literal is tokenized with added tokens switched off."""
    jobs: list[tuple[str, bool, bool]] = []  # (text, middle, as plain text)
    layout: list[list[tuple[int, int]]] = []  # per piece: (job index, offset shift)
    for piece in pieces:
        if not piece.literals:  # the common case: one job, nothing to cut or shift
            layout.append([(len(jobs), 0)])
            jobs.append((piece.text, piece.middle, False))
            continue
        cuts, parts, cursor = [], [], 0
        for start, end in sorted(piece.literals):
            if cursor < start:
                parts.append((cursor, start, False))
            parts.append((start, end, True))
            cursor = end
        if cursor < len(piece.text) or not parts:
            parts.append((cursor, len(piece.text), False))
        for k, (start, end, plain) in enumerate(parts):
            cuts.append((len(jobs), start))
            jobs.append((piece.text[start:end], piece.middle or k > 0, plain))
        layout.append(cuts)
    results = _run_jobs(tokenizer, jobs, offsets)
    out = []
    for cuts in layout:
        if len(cuts) == 1:
            out.append(results[cuts[0][0]])
            continue
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for job, shift in cuts:
            job_ids, job_offsets = results[job]
            ids += job_ids
            offsets += [(s + shift, e + shift) for s, e in job_offsets]
        out.append((ids, offsets))
    return out


def _run_jobs(tokenizer, jobs: list[tuple[str, bool, bool]], with_offsets: bool):
    results: list = [None] * len(jobs)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for plain in (False, True):
        chosen = [i for i, job in enumerate(jobs) if job[2] == plain]
        if not chosen:
            continue
        texts = [("\n" + jobs[i][0]) if jobs[i][1] else jobs[i][0] for i in chosen]
        options = {"split_special_tokens": True} if plain else {}
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=with_offsets, **options)
        all_offsets = encoded["offset_mapping"] if with_offsets else [[]] * len(chosen)
        for i, ids, offsets in zip(chosen, encoded["input_ids"], all_offsets):
            if jobs[i][1]:
                if ids[: len(newline)] == newline:
                    ids = ids[len(newline) :]
                    offsets = [(max(s - 1, 0), max(e - 1, 0)) for s, e in offsets[len(newline) :]]
                else:  # the newline merged with the piece's own first characters: tokenize it alone
                    alone = tokenizer(
                        jobs[i][0], add_special_tokens=False, return_offsets_mapping=with_offsets, **options
                    )
                    ids, offsets = alone["input_ids"], alone["offset_mapping"] if with_offsets else []
            results[i] = (list(ids), offsets)
    return results


def control_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    """A regex matching any of `tokens` (given longest first, so a token wins over its parts); None for none."""
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def literal_ranges(text: str, pattern: re.Pattern | None) -> list[tuple[int, int]]:
    """Where control tokens occur in `text` (no overlaps)."""
    if pattern is None or not text:
        return []
    return [m.span() for m in pattern.finditer(text)]
