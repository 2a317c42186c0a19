"""Records in, streamed: local files (.jsonl .json .csv .parquet, and .txt as one document), `save_to_disk` folders
and hub datasets, each record with its 1-based number. Nothing holds all records at once, except a .json file,
which is one document.

Text files may start with a UTF-8 byte-order mark (Windows tools write one): it is skipped. A file that is not
UTF-8 is refused with the line where decoding failed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from sft_cli.errors import DataError
from sft_cli.hub import dataset_commit, hub_unreachable, looks_local, offline_requested
from sft_cli.recipe.sections import DATA_SUFFIXES

BOM = b"\xef\xbb\xbf"
BATCH = 1000
NOT_UTF8_HINT = "save the file as UTF-8 (most editors and `iconv -t UTF-8` can convert it)"


def iter_records(
    path: str, split: str = "train", name: str | None = None, revision: str | None = None
) -> Iterator[tuple[int, dict]]:
    """(number, record) for every record of a local file, a folder of data files (in name order, numbered on
    across files), a `save_to_disk` folder, or a hub dataset (needs internet; `name` is its configuration,
    `revision` its branch, tag or commit)."""
    local = Path(path)
    if local.is_file():
        yield from _file_records(local)
        return
    if local.is_dir() and not is_saved_dataset(local):
        number = 0
        for file in data_files(local):
            for _, record in _file_records(file):
                number += 1
                yield number, record
        return
    yield from _dataset_records(open_dataset(path, split, name, revision))


def _file_records(path: Path) -> Iterator[tuple[int, dict]]:
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".txt": _text}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise DataError(f"{path}: unsupported file type {suffix!r}", hint="use .jsonl .json .csv .parquet or .txt")
    yield from readers[suffix](path)


def _text(path: Path) -> Iterator[tuple[int, dict]]:
    """A .txt file is one document (plain text for `format: text`); a folder of them, one document each."""
    try:
        yield 1, {"text": path.read_text(encoding="utf-8-sig")}
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at {error.start})") from None


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (one dataset, or a dict of splits)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def data_files(folder: Path) -> list[Path]:
    """The data files of a folder (not its subfolders), as `datasets` reads a data_dir; none is an error."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DataError(
            f"{folder}: a data folder holds .jsonl, .json, .csv, .parquet or .txt files, or a save_to_disk dataset; "
            "this one has neither",
            hint="point data.path at a data file, or at a folder of them",
        )
    return files


def open_dataset(path: str, split: str, name: str | None = None, revision: str | None = None):
    """A `save_to_disk` folder or a hub dataset as a memory-mapped `datasets.Dataset`."""
    import datasets

    local = Path(path)
    if local.is_dir():
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r}", hint=f"splits: {', '.join(loaded)} (data.split)")
            loaded = loaded[split]
        return loaded
    if looks_local(path):
        raise DataError(f"{path}: not found", hint="a relative data path is read from the recipe's folder")
    unreachable = hub_unreachable()
    if unreachable and not offline_requested():
        raise DataError(
            f"{path}: not a local file or folder, and the Hugging Face hub is out of reach: {unreachable}",
            hint="point data.path at a local file, or set HF_HUB_OFFLINE=1 to use a copy in the hub cache",
        )
    try:
        return datasets.load_dataset(path, name, split=split, revision=revision)
    except Exception as exc:  # the hub raises many types; the user needs the reason, not the trace
        raise DataError(
            f"{path}: cannot load from the Hugging Face hub: {exc}",
            hint="check the dataset id and your network, or point data.path at a local file",
        ) from None


def _dataset_records(dataset) -> Iterator[tuple[int, dict]]:
    number = 0
    for batch in dataset.iter(batch_size=BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            number += 1
            yield number, dict(zip(keys, values))


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
            hint=NOT_UTF8_HINT,
        ) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    number = 0
    for line_number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {line_number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
        number += 1
        yield number, record


def _json(path: Path) -> Iterator[tuple[int, dict]]:
    raw = path.read_bytes().removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})", hint=NOT_UTF8_HINT
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f'{path}: expected a list of objects (or {{"data": [...]}})')
    yield from enumerate(data, 1)


def _lines(path: Path) -> Iterator[str]:
    """A text file's lines, decoded one by one, so a decoding error names its line."""
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, 1):
            yield _decode(raw[len(BOM) :] if line_number == 1 and raw.startswith(BOM) else raw, path, line_number)


def _csv(path: Path) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(_lines(path))
    try:
        yield from enumerate(reader, 1)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: {exc}") from None


def _parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def count_records(path: str, split: str = "train", name: str | None = None, revision: str | None = None) -> int:
    """How many records `iter_records` yields, without holding them (for a seeded eval split)."""
    local = Path(path)
    if local.is_file() and local.suffix.lower() == ".jsonl":
        with local.open("rb") as f:
            return sum(1 for line in f if line.strip() and line.strip() != BOM)
    if local.is_file() and local.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(local).metadata.num_rows
    if local.is_dir() and not is_saved_dataset(local):
        return sum(count_records(str(file)) for file in data_files(local))
    if not local.is_file():
        return len(open_dataset(path, split, name, revision))
    return sum(1 for _ in iter_records(path, split))


def source_identity(path: str, split: str, name: str | None = None, revision: str | None = None) -> dict:
    """What identifies a source's content cheaply: a file's path, size and modification time; each file of a
    folder; a hub dataset's id, configuration, split and the commit its revision points at (when the hub can
    say; else the revision as given)."""
    local = Path(path)
    if local.is_file():
        stat = local.stat()
        return {"file": str(local.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return {
            "folder": str(local.resolve()),
            "split": split,
            "files": [[str(p.relative_to(local)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        }
    return {"hub": path, "name": name, "split": split, "revision": dataset_commit(path, revision) or revision}
