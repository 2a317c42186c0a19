"""Rendered rows -> token ids and loss labels. The one encoding `sft preview` shows and `sft train` trains on.

The boundary rule: a rendered example is cut into pieces where trained and untrained text meet, and each
piece is tokenized on its own. The prompt is therefore tokenized exactly as it is at inference (alone), the
answer starts on a fresh token, and no token straddles the boundary. Where tokenizing the whole text in one
go would have merged text across a boundary, the diagnostics say so (`boundary_merge`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sft_cli.data import Rows
from sft_cli.errors import DataError
from sft_cli.recipe import Recipe
from sft_cli.templates import Rendered, extra_special_tokens, render

IGNORE = -100
WARNING_TEXT = {
    "boundary_merge": "tokenizing the whole text would merge across the prompt/answer boundary; sft tokenizes "
    "prompt and answer separately (the prompt exactly as at inference), so the answer starts on a fresh token",
    "marker_in_context": "the response marker tokenizes differently inside the prompt than alone; masking is by "
    "text position, so the mask is right, but a collator that searches for the marker's tokens would miss it",
    "answer_leading_space": "the answer starts with whitespace: the model learns to emit it first",
    "answer_trailing_space": "the answer ends with whitespace before the end token",
    "prompt_trailing_space": "the prompt ends with a space or tab: the answer's first word is trained without "
    "its usual leading space",
    "special_token_in_text": "row text contains a special token's literal text, which encodes as that token",
    "end_token_missing": "the trained tokens do not end with an end token (EOS / end of turn): generation won't stop",
}


@dataclass(frozen=True)
class Encoded:
    """One training example: ids, labels (-100 = no loss), and where it came from."""

    row: int
    text: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class Warning:
    kind: str
    rows: list[int] = field(default_factory=list)
    detail: str = ""

    @property
    def message(self) -> str:
        return WARNING_TEXT[self.kind]


@dataclass
class Stats:
    rows: int = 0
    examples: int = 0
    dropped: int = 0
    truncated: int = 0
    skipped: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    max_tokens: int = 0
    max_length: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)

    @property
    def mean_tokens(self) -> float:
        return self.total_tokens / self.examples if self.examples else 0.0

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "examples": self.examples, "dropped": self.dropped, "truncated": self.truncated,
            "skipped": self.skipped, "trained_tokens": self.trained_tokens, "total_tokens": self.total_tokens,
            "trained_share": round(self.trained_share, 4), "mean_tokens": round(self.mean_tokens, 1),
            "max_tokens": self.max_tokens, "max_length": self.max_length,
        }


@dataclass
class EncodedSet:
    examples: list[Encoded]
    stats: Stats
    warnings: list[Warning]


@dataclass(frozen=True)
class _Piece:
    text: str
    trained: bool
    protected: tuple[tuple[int, int], ...]  # marker character ranges inside the piece: never truncated


def _pieces(rendered: Rendered) -> list[_Piece]:
    """Join consecutive segments into pieces that are either all answer or all not answer."""
    pieces: list[_Piece] = []
    text, protected, trained = "", [], None
    for segment in rendered.segments:
        is_answer = segment.kind == "answer"
        if trained is not None and is_answer != trained:
            pieces.append(_Piece(text, trained, tuple(protected)))
            text, protected = "", []
        trained = is_answer
        if segment.kind == "marker":
            protected.append((len(text), len(text) + len(segment.text)))
        text += segment.text
    if trained is not None:
        pieces.append(_Piece(text, trained, tuple(protected)))
    return pieces


def end_tokens(tokenizer) -> tuple[str, ...]:
    """Texts that end a turn: EOS and the tokenizer's other special tokens (e.g. <|im_end|>, <|eot_id|>)."""
    specials = [tokenizer.eos_token, *tokenizer.all_special_tokens]
    return tuple(dict.fromkeys(t for t in specials if t))


def _bos_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text (usually BOS, often nothing)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []


def special_prefix(tokenizer, text: str, template, bos: list[int] | None = None) -> list[int]:
    """The ids put before an example: the tokenizer's BOS, once; none for `chat`, whose template writes its own,
    nor for a text that already starts with BOS. `bos` is `_bos_prefix(tokenizer)`, when already known."""
    bos_text = tokenizer.bos_token or ""
    if template == "chat" or (bos_text and text.startswith(bos_text)):
        return []
    return _bos_prefix(tokenizer) if bos is None else bos


def prompt_ids(tokenizer, prompt: str, template) -> list[int]:
    """Token ids of an inference prompt, exactly as training tokenizes the same prompt text."""
    return special_prefix(tokenizer, prompt, template) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def prepare_tokenizer(tokenizer, recipe: Recipe) -> list[str]:
    """Add the template's special tokens and a pad token; returns the tokens that were new."""
    new = [t for t in extra_special_tokens(recipe.template) if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return new


def render_rows(rows: Rows, tokenizer, recipe: Recipe) -> list[Rendered]:
    ends = end_tokens(tokenizer)
    out = []
    for row in rows.rows:
        try:
            out.append(render(recipe.template, row.fields, tokenizer, loss_turns=recipe.loss_turns, end_tokens=ends))
        except DataError as exc:
            raise DataError(f"{rows.source} row {row.number}: {exc.message}", exc.hint) from None
    return out


def encode_rows(rows: Rows, tokenizer, recipe: Recipe, diagnose: bool = True) -> EncodedSet:
    """Render and encode every row; apply the overflow policy; count everything; optionally diagnose traps."""
    rendered = render_rows(rows, tokenizer, recipe)
    pieces = [_pieces(r) for r in rendered]
    flat = [p.text for ps in pieces for p in ps]
    tokens = tokenizer(flat, add_special_tokens=False, return_offsets_mapping=True) if flat else {
        "input_ids": [], "offset_mapping": []}
    bos = _bos_prefix(tokenizer)
    stats = Stats(rows=len(rows.rows) + len(rows.skipped), skipped=len(rows.skipped), max_length=recipe.max_length,
                  skipped_rows=list(rows.skipped))
    warnings: dict[str, Warning] = {}
    end_ids = set(tokenizer.convert_tokens_to_ids(list(end_tokens(tokenizer))))
    examples: list[Encoded] = []
    k = 0
    for row, row_rendered, row_pieces in zip(rows.rows, rendered, pieces):
        ids, labels, removable = [], [], []
        prefix = special_prefix(tokenizer, row_rendered.text, recipe.template, bos)
        ids += prefix
        labels += [IGNORE if recipe.loss == "masked" else t for t in prefix]
        removable += [False] * len(prefix)
        for piece in row_pieces:
            piece_ids, offsets = tokens["input_ids"][k], tokens["offset_mapping"][k]
            k += 1
            ids += piece_ids
            train_piece = piece.trained or recipe.loss == "unmasked"
            labels += piece_ids if train_piece else [IGNORE] * len(piece_ids)
            removable += [not piece.trained and not _in_marker(s, e, piece.protected) for s, e in offsets]
        truncated = False
        if len(ids) > recipe.max_length:
            if recipe.on_overflow == "error":
                raise DataError(
                    f"{rows.source} row {row.number}: {len(ids)} tokens, more than max_length {recipe.max_length}",
                    hint="raise max_length, or set on_overflow: drop | truncate_prompt",
                )
            if recipe.on_overflow == "truncate_prompt":
                ids, labels, truncated = _truncate_prompt(ids, labels, removable, len(ids) - recipe.max_length)
            if len(ids) > recipe.max_length:
                stats.dropped += 1
                stats.dropped_rows.append(row.number)
                continue
        trained = sum(label != IGNORE for label in labels)
        if trained == 0:
            stats.dropped += 1
            stats.dropped_rows.append(row.number)
            continue
        examples.append(Encoded(row.number, row_rendered.text, ids, labels, truncated))
        stats.examples += 1
        stats.truncated += truncated
        stats.trained_tokens += trained
        stats.total_tokens += len(ids)
        stats.max_tokens = max(stats.max_tokens, len(ids))
        if diagnose:
            for kind, detail in _row_traps(row_rendered, row_pieces, ids, labels, end_ids, tokenizer, recipe):
                warning = warnings.setdefault(kind, Warning(kind, detail=detail))
                warning.rows.append(row.number)
    if diagnose:
        for kind, numbers in _merge_check(rendered, pieces, tokens["input_ids"], tokenizer).items():
            warnings.setdefault(kind, Warning(kind)).rows.extend(rows.rows[i].number for i in numbers)
    return EncodedSet(examples, stats, sorted(warnings.values(), key=lambda w: w.kind))


def _in_marker(start: int, end: int, markers: tuple[tuple[int, int], ...]) -> bool:
    return any(start < b and a < end for a, b in markers)


def _truncate_prompt(ids, labels, removable, excess):
    """Remove `excess` prompt tokens from the left, never a template marker or an answer token."""
    drop, budget = set(), excess
    for i, can in enumerate(removable):
        if budget == 0:
            break
        if can:
            drop.add(i)
            budget -= 1
    if budget:  # not enough prompt to cut: the caller drops the example
        return ids, labels, False
    keep = [i for i in range(len(ids)) if i not in drop]
    return [ids[i] for i in keep], [labels[i] for i in keep], True


def _row_traps(rendered, pieces, ids, labels, end_ids, tokenizer, recipe):
    """Per-row whitespace and boundary traps: yields (kind, detail)."""
    segments = rendered.segments
    ends = end_tokens(tokenizer)
    for answer in (s.text for s in segments if s.kind == "answer"):
        body = next((answer[: -len(end)] for end in ends if answer.endswith(end)), answer)
        if body[:1].isspace():
            yield "answer_leading_space", repr(body[:12])
        if body[-1:].isspace():
            yield "answer_trailing_space", repr(body[-12:])
    for before, after in zip(pieces, pieces[1:]):
        if after.trained and before.text.endswith((" ", "\t")):
            yield "prompt_trailing_space", repr(before.text[-16:])
    specials = [t for t in (*tokenizer.all_special_tokens, *extra_special_tokens(recipe.template)) if t]
    for segment in segments:
        text = segment.text
        if segment.kind == "answer":
            text = next((text[: -len(end)] for end in ends if text.endswith(end)), text)
        hit = next((t for t in specials if t in text), None) if segment.kind != "marker" else None
        if hit:
            yield "special_token_in_text", hit
            break
    if recipe.loss == "masked":
        trained = [t for t, label in zip(ids, labels) if label != IGNORE]
        if trained and trained[-1] not in end_ids:
            yield "end_token_missing", ""
    markers = [s.text.strip() for s in segments[:-1] if s.kind == "marker" and s.text.strip()]
    if markers and recipe.template != "chat":
        marker_ids = tokenizer(markers[-1], add_special_tokens=False)["input_ids"]
        if marker_ids and not _contains(ids, marker_ids):
            yield "marker_in_context", repr(markers[-1])


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _merge_check(rendered, pieces, piece_ids, tokenizer) -> dict[str, list[int]]:
    """Rows whose whole-text tokenization differs from the piecewise one (a merge across a boundary)."""
    multi = [i for i, ps in enumerate(pieces) if len(ps) > 1]
    if not multi:
        return {}
    whole = tokenizer([rendered[i].text for i in multi], add_special_tokens=False)["input_ids"]
    starts, k = [], 0
    for ps in pieces:
        starts.append(k)
        k += len(ps)
    merged = defaultdict(list)
    for i, whole_ids in zip(multi, whole):
        joined = [t for j in range(starts[i], starts[i] + len(pieces[i])) for t in piece_ids[j]]
        if joined != whole_ids:
            merged["boundary_merge"].append(i)
    return merged
