"""Rendered rows -> token ids and loss labels. The one encoding `sft preview` shows and `sft train` trains on.

The boundary rule: a rendered example is cut where trained and untrained text meet. Everything before a trained
answer is tokenized as one text, exactly as the prompt is tokenized at inference; the answer is tokenized on its
own, so it starts on a fresh token and no token straddles the boundary. For a later answer in the same example
(multi-turn chats) the whole text before it is tokenized again as one text; where those ids do not extend the ids
so far, that turn is trained in an example of its own, so every trained turn sees its inference prompt's ids.
Where tokenizing the whole text in one go would have merged across a boundary, the diagnostics say so
(`boundary_merge`).

Row text that spells a control token (a literal `<|im_end|>`) is tokenized as plain text unless the recipe sets
`special_tokens_in_text: control`; only the template's own markers become control tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sft_cli.data.rows import Rows
from sft_cli.encoding.rendered import Rendered, RenderOptions, Segment
from sft_cli.encoding.stats import DataWarning, Stats
from sft_cli.encoding.templates import extra_special_tokens, render, render_options
from sft_cli.encoding.tokens import Piece, control_pattern, literal_ranges, tokenize_pieces
from sft_cli.errors import DataError
from sft_cli.recipe.schema import Recipe

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One training example: ids, labels (-100 = no loss), and where it came from."""

    row: int
    text: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class EncodedSet:
    examples: list[Encoded]
    stats: Stats
    warnings: list[DataWarning]


@dataclass
class _Layout:
    """An example cut for tokenizing: the pieces to tokenize and, per trained answer, where it starts and ends."""

    rendered: Rendered
    text: str
    answers: list[tuple[int, int]]  # character ranges of trained runs
    markers: list[tuple[int, int]]  # character ranges of template markers (never truncated)
    literals: list[tuple[int, int]]  # control-token literals in row text, tokenized as plain text
    pieces: list[Piece] = field(default_factory=list)


def _layout(rendered: Rendered, control) -> _Layout:
    """`control`: the compiled control-token pattern for row text, or None where row text may spell them."""
    text = rendered.text
    answers, markers, literals = [], [], []
    cursor = 0
    for segment in rendered.segments:
        end = cursor + len(segment.text)
        if segment.kind == "answer":
            if answers and answers[-1][1] == cursor:
                answers[-1] = (answers[-1][0], end)
            else:
                answers.append((cursor, end))
        elif segment.kind == "marker":
            markers.append((cursor, end))
        if segment.plain and control is not None:
            literals += [(cursor + s, cursor + e) for s, e in literal_ranges(segment.text, control)]
        cursor = end
    layout = _Layout(rendered, text, answers, markers, literals)
    for start, end in answers:  # the whole text before the answer, then the answer alone
        layout.pieces.append(_piece(text, 0, start, False, literals))
        layout.pieces.append(_piece(text, start, end, True, literals))
    rest = answers[-1][1] if answers else 0
    if rest < len(text) or not answers:
        layout.pieces.append(_piece(text, rest, len(text), bool(answers), literals))
    return layout


def _piece(text: str, start: int, end: int, middle: bool, literals) -> Piece:
    inside = tuple((s - start, e - start) for s, e in literals if start <= s and e <= end)
    return Piece(text[start:end], middle, inside)


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


def prompt_ids(tokenizer, prompt: Rendered, template, options: RenderOptions, mode: str = "plain") -> list[int]:
    """Token ids of an inference prompt, exactly as training tokenizes the same text before an answer."""
    layout = _layout(prompt, control_pattern(options.control_tokens) if mode == "plain" else None)
    ids, _ = tokenize_pieces(
        tokenizer, [_piece(layout.text, 0, len(layout.text), False, layout.literals)], offsets=False
    )[0]
    return special_prefix(tokenizer, layout.text, template) + ids


def prepare_tokenizer(tokenizer, recipe: Recipe) -> list[str]:
    """Add the template's special tokens and a pad token; returns the tokens that were new."""
    new = [t for t in extra_special_tokens(recipe.template) if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return new


def render_rows(rows: Rows, tokenizer, recipe: Recipe, options: RenderOptions):
    """Each row's examples; a row the template refuses stops with its number, or is skipped and counted under
    `data.on_bad_row: skip` (returned as (number, reason) pairs)."""
    out, skipped = [], []
    for row in rows.rows:
        try:
            out.append(render(recipe.template, row.fields, tokenizer, options))
        except DataError as exc:
            if recipe.data.on_bad_row == "skip":
                out.append([])
                skipped.append((row.number, exc.message))
                continue
            raise DataError(f"{rows.source} row {row.number}: {exc.message}", exc.hint) from None
    return out, skipped


def _assemble(layout: _Layout, results, prefix: list[int], unmasked: bool):
    """(ids, labels, removable, answers to split off) of one example from its tokenized pieces; ids is None when
    every answer was split off. `removable` (prompt tokens truncation may cut) is empty when offsets were not
    asked for."""
    ids, labels, removable = list(prefix), [t if unmasked else IGNORE for t in prefix], [False] * len(prefix)

    def extend(new: list[int], trained: bool, can_remove: list[bool]) -> None:
        ids.extend(new)
        labels.extend(new if trained else [IGNORE] * len(new))
        removable.extend(can_remove)

    body: list[int] = []  # ids after the prefix, which each later prompt's own tokenization must extend
    split_off = []
    for n in range(len(layout.answers)):
        (before, offsets), (answer, _) = results[2 * n], results[2 * n + 1]
        if before[: len(body)] != body:
            split_off.append(n)
            continue
        extend(before[len(body) :], unmasked, [not _in_marker(s, e, layout.markers) for s, e in offsets[len(body) :]])
        extend(answer, True, [False] * len(answer))
        body = before + answer
    if layout.answers and len(split_off) == len(layout.answers):
        return None, None, None, split_off
    last_kept = not layout.answers or (len(layout.answers) - 1) not in split_off
    if len(results) > 2 * len(layout.answers) and last_kept:
        rest, offsets = results[-1]
        extend(rest, unmasked, [not layout.answers and not _in_marker(s, e, layout.markers) for s, e in offsets])
    return ids, labels, removable, split_off


def _alone(layout: _Layout, n: int) -> Rendered:
    """The example of answer n alone: the text through it, earlier answers untrained."""
    start, end = layout.answers[n]
    segments, cursor = [], 0
    for segment in layout.rendered.segments:
        seg_end = cursor + len(segment.text)
        if cursor >= end:
            break
        text = segment.text[: end - cursor]
        kind = segment.kind if segment.kind != "answer" or cursor >= start else "prompt"
        segments.append(Segment(text, kind, segment.plain))
        cursor = seg_end
    return Rendered(tuple(segments), True, layout.rendered.notes)


def encode_rows(
    rows: Rows, tokenizer, recipe: Recipe, diagnose: bool = True, options: RenderOptions | None = None
) -> EncodedSet:
    """Render and encode every row; apply the overflow policy; count everything; optionally diagnose traps."""
    options = options or render_options(recipe, tokenizer)
    control = control_pattern(options.control_tokens) if recipe.special_tokens_in_text == "plain" else None
    rendered, refused = render_rows(rows, tokenizer, recipe, options)
    layouts = [[_layout(r, control) for r in row_examples] for row_examples in rendered]
    with_offsets = recipe.on_overflow == "truncate_prompt"
    results = tokenize_pieces(
        tokenizer, [p for row in layouts for layout in row for p in layout.pieces], offsets=with_offsets
    )
    bos = _bos_prefix(tokenizer)
    stats = Stats(rows=len(rows.rows) + len(rows.skipped), max_length=recipe.max_length)
    for number, reason in sorted([*rows.skipped, *refused]):
        stats.skip(number, reason)
    warnings: dict[str, DataWarning] = {}
    end_ids = set(tokenizer.convert_tokens_to_ids(list(options.stop_tokens)))
    examples: list[Encoded] = []
    merge_candidates: list[tuple[int, _Layout, list[int]]] = []
    marker_ids: dict[str, list[int]] = {}
    k = 0
    for row, row_layouts in zip(rows.rows, layouts):
        queue = []
        for layout in row_layouts:
            queue.append((layout, results[k : k + len(layout.pieces)]))
            k += len(layout.pieces)
        while queue:
            layout, pieces = queue.pop(0)
            prefix = special_prefix(tokenizer, layout.text, recipe.template, bos)
            ids, labels, removable, split_off = _assemble(layout, pieces, prefix, options.unmasked)
            for n in split_off:
                alone = _layout(_alone(layout, n), control)
                queue.append((alone, tokenize_pieces(tokenizer, alone.pieces, offsets=with_offsets)))
            if ids is None:
                continue
            if layout.rendered.document and len(ids) > recipe.max_length:
                examples += _windows(row.number, ids, recipe.max_length, tokenizer, stats)
                continue
            encoded = _apply_overflow(row.number, rows.source, layout, ids, labels, removable, recipe, stats)
            if encoded is None:
                continue
            examples.append(encoded)
            stats.split_turns += layout.rendered.split
            if diagnose:
                traps = list(
                    _row_traps(
                        layout.rendered,
                        encoded.input_ids,
                        encoded.labels,
                        end_ids,
                        tokenizer,
                        recipe,
                        options,
                        marker_ids,
                    )
                )
                traps += [(note, "") for note in layout.rendered.notes]
                for kind, detail in traps:
                    warnings.setdefault(kind, DataWarning(kind, detail=detail)).add(row.number)
                if len(layout.answers) and not encoded.truncated:
                    merge_candidates.append((row.number, layout, ids[len(prefix) :]))
    if diagnose:
        for number in _merge_check(merge_candidates, tokenizer):
            warnings.setdefault("boundary_merge", DataWarning("boundary_merge")).add(number)
    return EncodedSet(examples, stats, sorted(warnings.values(), key=lambda w: w.kind))


def _windows(number: int, ids: list[int], max_length: int, tokenizer, stats) -> list[Encoded]:
    """A plain-text document longer than max_length as consecutive windows of it, every token trained: splitting
    is right here (and only here), where no answer depends on a prompt before it."""
    stats.count_length(len(ids))
    windows = [ids[start : start + max_length] for start in range(0, len(ids), max_length)]
    stats.split_documents += 1
    stats.windows += len(windows)
    stats.examples += len(windows)
    stats.trained_tokens += len(ids)
    stats.total_tokens += len(ids)
    stats.max_tokens = max(stats.max_tokens, max_length)
    text = tokenizer.batch_decode(windows)
    return [Encoded(number, part, window, list(window), False) for part, window in zip(text, windows)]


def _apply_overflow(number, source, layout, ids, labels, removable, recipe, stats) -> Encoded | None:
    """The example as trained, after the overflow policy; None (and counted) when it is dropped."""
    truncated = False
    stats.count_length(len(ids))
    if len(ids) > recipe.max_length:
        if recipe.on_overflow == "error":
            raise DataError(
                f"{source} row {number}: {len(ids)} tokens, more than max_length {recipe.max_length}",
                hint="raise max_length, or set on_overflow: drop | truncate_prompt",
            )
        if recipe.on_overflow == "truncate_prompt":
            ids, labels, truncated = _truncate_prompt(ids, labels, removable, len(ids) - recipe.max_length)
        if len(ids) > recipe.max_length:
            stats.drop(number)
            return None
    trained = len(labels) - labels.count(IGNORE)
    if trained == 0:
        stats.drop(number)
        return None
    stats.examples += 1
    stats.truncated += truncated
    stats.trained_tokens += trained
    stats.total_tokens += len(ids)
    stats.max_tokens = max(stats.max_tokens, len(ids))
    return Encoded(number, layout.text, ids, labels, truncated)


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


def _row_traps(rendered, ids, labels, end_ids, tokenizer, recipe, options, marker_ids: dict):
    """Per-example whitespace, boundary and control-token traps: yields (kind, detail). `marker_ids` caches the
    tokenization of response markers across rows."""
    segments = rendered.segments
    # the row's own answer text (chat answers are template output, checked by the template's own rules)
    answers = "".join(s.text if s.kind == "answer" and s.plain else "\0" for s in segments).split("\0")
    for body in (a for a in answers if a) if recipe.template != "chat" else ():
        if body[:1].isspace():
            yield "answer_leading_space", repr(body[:12])
        if body[-1:].isspace():
            yield "answer_trailing_space", repr(body[-12:])
    for before, after in zip(segments, segments[1:]):
        if after.kind == "answer" and before.kind != "answer" and before.text.endswith((" ", "\t")):
            yield "prompt_trailing_space", repr(before.text[-16:])
    specials = [t for t in (*options.control_tokens, *extra_special_tokens(recipe.template)) if t]
    hit = next((t for s in segments if s.plain for t in specials if t in s.text), None)
    if hit:
        yield "special_token_in_text", hit
    if recipe.loss == "masked":
        last = next((t for t, label in zip(reversed(ids), reversed(labels)) if label != IGNORE), None)
        if last is not None and last not in end_ids:
            yield "end_token_missing", ""
    markers = [s.text.strip() for s in segments[:-1] if s.kind == "marker" and s.text.strip()]
    if markers and recipe.template != "chat":
        if markers[-1] not in marker_ids:  # the same few markers on every row: tokenize each once
            marker_ids[markers[-1]] = tokenizer(markers[-1], add_special_tokens=False)["input_ids"]
        alone = marker_ids[markers[-1]]
        if alone and not _contains(ids, alone):
            yield "marker_in_context", repr(markers[-1])


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n, start = len(needle), 0
    while True:
        try:
            start = haystack.index(needle[0], start)
        except ValueError:
            return False
        if haystack[start : start + n] == needle:
            return True
        start += 1


def _merge_check(candidates, tokenizer) -> list[int]:
    """Rows whose whole-text tokenization (row literals kept as text) differs from the piecewise one: a merge across
    a prompt/answer boundary."""
    if not candidates:
        return []
    whole = tokenize_pieces(
        tokenizer,
        [_piece(layout.text, 0, len(layout.text), False, layout.literals) for _, layout, _ in candidates],
        offsets=False,
    )
    return [number for (number, _, ours), (theirs, _) in zip(candidates, whole) if ours != theirs]
