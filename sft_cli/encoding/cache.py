"""The prepared dataset: a split's rows encoded once (the one encode function, diagnostics included) into an Arrow
file, memory-mapped, and cached on disk under a fingerprint of everything that changes the result.

Rows stream from the source in batches; worker processes encode them, at most two batches per worker in
flight, and the main process appends each encoded batch to the Arrow file as it comes back, in row order. Memory
stays bounded by the batch size, not the dataset. The folder is built aside and moved into place whole, so a
cache entry is complete or absent.

Layout: `<cache>/<fingerprint>/{data.arrow, stats.json}`; the cache root is `data.cache_dir`, else
`$SFT_CACHE_DIR`, else `$XDG_CACHE_HOME/sft/prepared` (`~/.cache/sft/prepared`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sft_cli.data.rows import row_batches, source_of
from sft_cli.data.sources import source_identity
from sft_cli.encoding.rendered import RenderOptions
from sft_cli.encoding.stats import DataWarning, Stats, merge_warnings
from sft_cli.encoding.templates import render_options
from sft_cli.folders import building, cache_home, move_into_place
from sft_cli.progress import Progress
from sft_cli.recipe.schema import Recipe

DATA_FILE, STATS_FILE = "data.arrow", "stats.json"
# the packages whose code decides what an encoded row is: a change to any file in them re-encodes
ENCODING_PACKAGES = ("data", "encoding")


@dataclass
class Prepared:
    """An encoded split on disk, with its statistics; `cached` says whether an earlier command built it."""

    split: str
    folder: Path
    stats: Stats
    warnings: list[DataWarning]
    cached: bool
    fingerprint: str

    def discard(self) -> None:
        """Delete a prepared dataset that was built with `cache=False` (a cached one stays)."""
        if not self.cached and self.folder.name.startswith(f"{self.fingerprint}.partial-"):
            shutil.rmtree(self.folder, ignore_errors=True)

    def dataset(self):
        """The encoded rows as a memory-mapped `datasets.Dataset` (input_ids, labels, row, truncated)."""
        import datasets

        return datasets.Dataset.from_file(str(self.folder / DATA_FILE))


def cache_root(recipe: Recipe) -> Path:
    if recipe.data.cache_dir:
        return Path(recipe.data.cache_dir)
    if os.environ.get("SFT_CACHE_DIR"):
        return Path(os.environ["SFT_CACHE_DIR"])
    return cache_home() / "prepared"


def _code_version() -> str:
    """The package version and a hash of the encoding packages' sources (a development checkout changes code
    without changing its version)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in encoding_sources():
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        version = importlib.metadata.version("sft-cli")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version}+{digest.hexdigest()[:12]}"


def encoding_sources() -> list[Path]:
    """Every source file of the encoding packages, in a fixed order."""
    root = Path(__file__).resolve().parent.parent
    return sorted(p for name in ENCODING_PACKAGES for p in (root / name).rglob("*.py"))


def _tokenizer_identity(tokenizer, options) -> str:
    """A hash of the tokenizer as sft uses it: its saved files (vocabulary, added tokens, chat template) and the
    stop and control tokens that rendering reads."""
    digest = hashlib.sha256(repr(options).encode())
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(Path(folder).iterdir()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(recipe: Recipe, split: str, tokenizer, options) -> str:
    """Everything that changes a split's encoding: the data's identity, the recipe fields that shape encoding,
    the tokenizer, and sft's own encoding code."""
    data = recipe.data
    shaping = {
        "split": split,
        "source": source_identity(source_of(recipe, split), data.split, data.name, data.revision),
        "data": data.model_dump(exclude={"cache_dir", "num_proc"}),
        "seed": recipe.training.seed if data.eval_fraction else None,
        "encoding": recipe.encoding.model_dump(mode="json"),
        "tokenizer": _tokenizer_identity(tokenizer, options),
        "sft": _code_version(),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_prepared(folder: Path, split: str, fp: str) -> Prepared | None:
    stats_path = folder / STATS_FILE
    if not (stats_path.is_file() and (folder / DATA_FILE).is_file()):
        return None
    saved = json.loads(stats_path.read_text(encoding="utf-8"))
    warnings = [DataWarning(w["kind"], w["rows"], w["detail"], w["count"]) for w in saved["warnings"]]
    return Prepared(split, folder, Stats.from_json(saved["stats"]), warnings, True, fp)


def prepare_split(
    recipe: Recipe,
    tokenizer,
    split: str = "train",
    *,
    cache: bool = True,
    root: Path | None = None,
    num_proc: int | None = None,
    progress: Progress | None = None,
    options: RenderOptions | None = None,
) -> Prepared:
    """The prepared dataset of a split: read from the cache when an identical one was built before, else encoded
    now (and cached, unless `cache` is False: then it goes to a temporary folder under `root`). `options`: the
    render options when the caller already has them (they read the model's generation config)."""
    options = options or render_options(recipe, tokenizer)
    fp = fingerprint(recipe, split, tokenizer, options)
    if root is None:
        root = cache_root(recipe) if cache else Path(tempfile.gettempdir())
    root = Path(root)
    folder = root / fp
    if cache and (found := load_prepared(folder, split, fp)):
        return found
    if cache and folder.exists():  # a damaged entry (a file deleted by hand): built again below
        shutil.rmtree(folder, ignore_errors=True)
    with building(folder, f"preparing the {split} rows") as aside:
        stats, warnings = _encode_to(aside, recipe, tokenizer, split, options, num_proc, progress or Progress())
        (aside / STATS_FILE).write_text(
            json.dumps({"stats": stats.to_json(), "warnings": [w.as_dict() for w in warnings]}), encoding="utf-8"
        )
        if not cache:
            return Prepared(split, aside, stats, warnings, False, fp)
        move_into_place(aside, folder)  # another process's identical entry, finished first, stays
    return Prepared(split, folder, stats, warnings, False, fp)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _encode_to(folder: Path, recipe, tokenizer, split, options, num_proc, progress: Progress):
    """Encode a split batch by batch into `folder/data.arrow`; returns the merged stats and warnings."""
    import pyarrow as pa

    workers = num_proc or recipe.data.num_proc or default_workers()
    stats, warnings = Stats(max_length=recipe.max_length), {}
    schema = _schema()
    progress.start(f"encoding {split} rows")
    try:
        with pa.OSFile(str(folder / DATA_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch, batch_stats, batch_warnings in _encoded_batches(recipe, tokenizer, split, options, workers):
                writer.write_batch(batch)
                stats.merge(batch_stats)
                merge_warnings(warnings, batch_warnings)
                progress.advance(batch_stats.rows)
    finally:
        progress.stop()
    return stats, sorted(warnings.values(), key=lambda w: w.kind)


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("labels", pa.list_(pa.int32())),
            ("row", pa.int64()),
            ("truncated", pa.bool_()),
        ]
    )


def _encoded_batches(recipe, tokenizer, split, options, workers: int):
    """(Arrow batch, stats, warnings) per batch of rows, in row order; in worker processes when there are cores."""
    batches = row_batches(recipe, split)
    if workers <= 1:
        for rows in batches:
            yield _encode_batch(rows, tokenizer, recipe, options)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # each worker is one core; no threads after fork
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(tokenizer, recipe, options)
    ) as pool:
        pending: deque = deque()
        for rows in batches:
            pending.append(pool.submit(_worker_encode, rows))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# A worker process encodes many batches with the same tokenizer and recipe: they are set once, when it starts.
_WORKER: dict = {}


def _worker_init(tokenizer, recipe, options) -> None:
    _WORKER.update(tokenizer=tokenizer, recipe=recipe, options=options)


def _worker_encode(rows):
    return _encode_batch(rows, _WORKER["tokenizer"], _WORKER["recipe"], _WORKER["options"])


def _encode_batch(rows, tokenizer, recipe, options):
    import pyarrow as pa

    from sft_cli.encoding.encode import encode_rows

    encoded = encode_rows(rows, tokenizer, recipe, diagnose=True, options=options)
    examples = encoded.examples
    batch = pa.record_batch(
        [
            pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
            pa.array([e.labels for e in examples], pa.list_(pa.int32())),
            pa.array([e.row for e in examples], pa.int64()),
            pa.array([e.truncated for e in examples], pa.bool_()),
        ],
        schema=_schema(),
    )
    return batch, encoded.stats, encoded.warnings
