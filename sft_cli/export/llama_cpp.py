"""llama.cpp's side of a GGUF export: its own converter (convert_hf_to_gguf.py with the gguf-py beside it), and
its own runtime (the `llama-cpp-python` bindings) for the round-trip check.

Which converter: the one in the llama.cpp sources that the installed `llama-cpp-python` was built from. That
source distribution (on PyPI) carries `vendor/llama.cpp` whole; sft fetches it once with pip, at the installed
bindings' version, and keeps the converter, its `conversion/` package and its gguf-py in
`$XDG_CACHE_HOME/sft/llama.cpp/<version>` (`~/.cache/sft/llama.cpp/<version>`). So the file is written by the
same llama.cpp release that checks it. `SFT_LLAMA_CPP=/path/to/llama.cpp` uses a checkout of your own instead.
`python -m sft_cli.export.llama_cpp` fetches it ahead of time (scripts/setup.sh does, for the tests).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.folders import build_aside, cache_home, move_into_place

CONVERTER = "convert_hf_to_gguf.py"
KEEP = (CONVERTER, "conversion/", "gguf-py/")  # what the converter imports, relative to the llama.cpp root
INSTALL_HINT = "pip install 'sft-cli[export]' (builds llama-cpp-python from source: about 5 minutes on 2 cores)"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def bindings_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise SftError(
            "GGUF export needs llama-cpp-python (llama.cpp's converter and runtime)", hint=INSTALL_HINT
        ) from None


CONVERTER_IMPORTS = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}  # module -> its package


def check_export_extra() -> None:
    """Everything a GGUF export runs is installed: the bindings, and what the converter imports (which would
    otherwise fail with ModuleNotFoundError after the merge was written)."""
    bindings_version()
    missing = [package for module, package in CONVERTER_IMPORTS.items() if not _importable(module)]
    if missing:
        raise SftError(f"GGUF export needs {', '.join(missing)} (llama.cpp's converter imports it)", hint=INSTALL_HINT)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def converter_dir() -> Path:
    """The llama.cpp folder whose convert_hf_to_gguf.py sft runs: $SFT_LLAMA_CPP, else the cached copy for the
    installed bindings' version, fetched now if absent."""
    own = os.environ.get("SFT_LLAMA_CPP")
    if own:
        if not (Path(own) / CONVERTER).is_file():
            raise SftError(f"SFT_LLAMA_CPP={own}: no {CONVERTER} there", hint="point it at a llama.cpp checkout")
        return Path(own)
    version = bindings_version()
    folder = cache_home() / "llama.cpp" / version
    if (folder / CONVERTER).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a copy cut short
    return fetch_converter(version, folder)


def fetch_converter(version: str, folder: Path) -> Path:
    """Download llama-cpp-python's source distribution at `version` (PyPI, through pip) and keep the converter."""
    with tempfile.TemporaryDirectory(prefix="sft-llama-cpp-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"llama-cpp-python=={version}", "-d", tmp]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode or not archives:
            reason = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise SftError(
                f"cannot fetch llama.cpp's converter (llama-cpp-python {version} sources from PyPI): {reason}",
                hint="connect to PyPI once, or set SFT_LLAMA_CPP to a llama.cpp checkout",
            )
        partial = build_aside(folder)
        try:
            with tarfile.open(archives[0]) as archive:
                for member in archive.getmembers():
                    _, _, inside = member.name.partition("/vendor/llama.cpp/")
                    if inside and inside.startswith(KEEP) and (member.isfile() or member.isdir()):
                        member.name = inside
                        archive.extract(member, partial, filter="data")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        move_into_place(partial, folder)
    return folder


def convert(hf_folder: Path, outfile: Path, outtype: str) -> str:
    """Run llama.cpp's converter on an HF folder; returns its log. Failures become one clear error."""
    root = converter_dir()
    command = [sys.executable, str(root / CONVERTER), str(hf_folder), "--outfile", str(outfile), "--outtype", outtype]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = done.stdout + done.stderr
    if done.returncode:
        lines = [line.removeprefix("ERROR:hf-to-gguf:").strip() for line in log.splitlines() if line.strip()]
        unsupported = next((line for line in lines if "not supported" in line), None)
        if unsupported:
            raise SftError(
                f"llama.cpp's converter cannot convert this model: {unsupported}",
                hint="--format hf works for every architecture transformers loads",
            )
        if "No space left" in log:
            raise SftError(f"{outfile.parent}: no space left on the device while writing the GGUF file")
        reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        raise SftError(f"llama.cpp's converter failed: {reason}", hint=f"its command: {' '.join(command)}")
    return log


# metadata keys whose token llama.cpp adds to its end-of-generation set (besides EOS and tokens it knows by text)
EXTRA_STOP_KEYS = ("eot", "eom")
NEW_METADATA = "gguf-py/gguf/scripts/gguf_new_metadata.py"


def add_stop_tokens(path: Path, stops: list[int]) -> list[int]:
    """Make llama.cpp end generation at every trained stop id: those it does not already stop at are written into
    the file's eot/eom metadata by gguf-py's own gguf_new_metadata.py (of the same llama.cpp). Returns the ids
    written; more than two such ids are left for the check to name."""
    vocab = GgufModel(path, vocab_only=True)
    missing = [token for token in stops if not vocab.is_stop(token)][: len(EXTRA_STOP_KEYS)]
    del vocab
    if not missing:
        return []
    pairs = [arg for key, token in zip(EXTRA_STOP_KEYS, missing) for arg in ("--special-token-by-id", key, str(token))]
    rewritten = path.with_name(path.name + ".partial")
    command = [sys.executable, str(converter_dir() / NEW_METADATA), str(path), str(rewritten), *pairs, "--force"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        rewritten.unlink(missing_ok=True)
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SftError(
            f"cannot write the stop tokens into {path.name}: {reason}", hint=f"its command: {' '.join(command)}"
        )
    os.replace(rewritten, path)
    return missing


class GgufModel:
    """A GGUF file loaded by llama.cpp (through llama-cpp-python): its tokenizer, chat template and stop tokens as
    llama.cpp reads them from the file's metadata, and greedy generation."""

    def __init__(self, path: Path, context: int = 2048, vocab_only: bool = False):
        try:
            import llama_cpp.llama_cpp as low
            from llama_cpp import Llama
            from llama_cpp._utils import suppress_stdout_stderr
        except ImportError:
            raise SftError("checking a GGUF export needs llama-cpp-python", hint=INSTALL_HINT) from None
        # Without llama.cpp's repacked weight layouts ("extra buffer types"): on this project's AVX-512 test CPU
        # their quantized kernels crash (SIGSEGV in decode, Q4_1 and Q8_0 alike). The check compares tokens, and
        # the plain layout computes the same quantized dot products. Llama() offers no switch, so its defaults
        # are wrapped while it loads.
        defaults = low.llama_model_default_params

        def plain_layout():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = plain_layout
        try:
            with suppress_stdout_stderr(disable=False):  # llama.cpp's C code logs to stderr past verbose=False
                self.llm = Llama(
                    model_path=str(path), n_ctx=context, n_threads=os.cpu_count() or 1, seed=0, verbose=False,
                    vocab_only=vocab_only,
                )  # fmt: skip
        finally:
            low.llama_model_default_params = defaults
        self.metadata = self.llm.metadata

    def chat_prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Prompt ids for a chat, as llama-cpp-python's chat completion builds them from the GGUF's template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self.llm._model
        eos, bos = model.token_eos(), model.token_bos()
        formatter = Jinja2ChatFormatter(
            template=self.metadata.get("tokenizer.chat_template", ""),
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        result = formatter(messages=messages, tools=tools)
        return self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def is_stop(self, token: int) -> bool:
        """Whether llama.cpp ends generation at this token (its end-of-generation set)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy ids after `prompt`, through the first end-of-generation token (kept)."""
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if self.is_stop(token) or len(out) >= max_new_tokens:
                break
        return out


if __name__ == "__main__":
    print(converter_dir())
