"""Whether a name is a local path or a hub id, and whether the Hugging Face hub can be reached now. A missing local
file is "not found" at once, never a hub lookup; without a network the first hub access fails in a second instead
of after the hub client's retries; HF_HUB_OFFLINE=1 is honoured (only what the hub cache already holds)."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow", ".gguf", ".safetensors", ".bin", ".yaml", ".yml")
PROBE_SECONDS = 3.0


def looks_local(name: str) -> bool:
    """A name that reads as a path: `./`, `../`, `/` or `~`, a file suffix, or a parent folder that exists here."""
    if name.startswith((".", "/", "~")) or Path(name).suffix.lower() in LOCAL_SUFFIXES:
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now (offline mode, or its host does not answer), or None when it can."""
    if offline_requested():
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return _probe(host, port)


@functools.cache
def _probe(host: str, port: int) -> str | None:
    """One connection attempt per host and process: a run asks for the tokenizer, the model and its generation
    config, and a network that drops packets would otherwise cost the timeout each time."""
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        return f"{host} cannot be reached ({error.strerror or error})"
    return None


@functools.cache
def dataset_commit(dataset: str, revision: str | None) -> str | None:
    """The commit a hub dataset's revision (None: its default branch) points at now, or None when the hub cannot
    say (offline, out of reach, private without a token): the prepared-data cache key and run.json name it, so
    a dataset updated on the hub is encoded afresh."""
    if hub_unreachable():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, revision=revision, timeout=PROBE_SECONDS).sha
    except Exception:  # any hub failure leaves the revision as the recipe gives it
        return None


@contextlib.contextmanager
def offline_hub(offline: bool = True) -> Iterator[None]:
    """Inside: the hub client, datasets and `evaluate` use their caches only, so a dataset or metric that is not
    cached fails at once rather than after the client's retries (about 25 s each). The libraries read their
    offline switches when imported, so the switch is their module settings, put back on the way out."""
    if not offline:
        yield
        return
    import importlib.util

    import datasets.config
    import huggingface_hub.constants

    settings = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    if importlib.util.find_spec("evaluate") is not None:  # lm-eval's metrics library, where installed
        import evaluate.config

        settings.append((evaluate.config, "HF_EVALUATE_OFFLINE"))
    saved = [getattr(module, name) for module, name in settings]
    for module, name in settings:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(settings, saved):
            setattr(module, name, value)
