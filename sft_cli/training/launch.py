"""Re-run `sft train` in several processes on this machine: sft starts the ranks itself (gloo on CPU, one GPU each on
GPUs), or `accelerate launch` with an accelerate config (FSDP, DeepSpeed, several machines)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sft_cli.errors import SftError

# accelerate turns these on only over GPU-type backends; on CPU it starts plain DDP processes instead, silently
GPU_ONLY = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}


def check_accelerate_config(path: Path, cuda: bool) -> None:
    """Refuse a config that cannot do what it says here, before any process starts."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SftError(f"{path}: cannot read the accelerate config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise SftError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise SftError(f"{path}: an accelerate config is a YAML mapping (see configs/accelerate/)")
    kind = str(config.get("distributed_type", "")).upper()
    if kind in GPU_ONLY and not cuda:
        raise SftError(
            f"{path}: distributed_type {config['distributed_type']} needs CUDA GPUs, and none is available: "
            f"accelerate runs {GPU_ONLY[kind]} only on GPU backends and would start plain data-parallel (DDP) "
            f"processes on CPU instead",
            hint="on CPU, drop --accelerate-config: `--num-processes N` runs data-parallel over gloo",
        )


def launch_processes(num_processes: int, accelerate_config: Path | None) -> int:
    """Run this very command again in N processes and return their exit code (the arguments travel unchanged: a
    process that a launcher started trains where it is, and its resume command names --num-processes too).
    With an accelerate config, `accelerate launch` sets up FSDP or DeepSpeed; otherwise sft starts the ranks
    itself, on CPU (gloo) and GPUs (one per process) alike, so that a signal reaches each of them once."""
    import torch

    cuda = torch.cuda.is_available()
    command = [sys.executable, "-m", "sft_cli", *sys.argv[1:]]
    if accelerate_config:
        check_accelerate_config(accelerate_config, cuda)
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        return supervise([[*accelerate, "--config_file", str(accelerate_config), *command[1:]]], [dict(os.environ)])
    return supervise([command] * num_processes, rank_environments(num_processes, cuda))


def rank_environments(processes: int, cuda: bool) -> list[dict[str, str]]:
    """What torchrun would set for each rank of one machine, and a fair share of the CPU threads each: two ranks
    each running as many threads as there are cores slow each other down several times over."""
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        "GROUP_RANK": "0",
    }
    if "OMP_NUM_THREADS" not in os.environ and not cuda:
        shared["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return [{**os.environ, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(processes)]


GRACE_S = 30  # how long the other ranks get to end by themselves once one has failed


def supervise(commands: list[list[str]], environments: list[dict[str, str]]) -> int:
    """Start the processes and wait for them all. They share this process group, so a terminal's Ctrl-C reaches
    each rank once, by the terminal (each checkpoints and exits 130); SIGTERM, which a scheduler or `docker stop`
    sends to this process alone, is passed on to every one. Returns the interrupt's exit code when they were
    interrupted, else the first failure's. A rank that fails leaves the others waiting in a collective: after a
    grace period they are stopped."""
    children = [subprocess.Popen(command, env=env) for command, env in zip(commands, environments)]

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}  # the ranks had it from the terminal
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, forward)
    try:
        codes = wait_all(children)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return next((code for code in codes if code in (130, 143)), next((code for code in codes if code), 0))


def wait_all(children: list[subprocess.Popen]) -> list[int]:
    """Every child's exit code; once one fails, the rest get GRACE_S seconds, then are killed."""
    failed_at = None
    while any(child.poll() is None for child in children):
        if failed_at is None and any(child.returncode for child in children if child.returncode is not None):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.2)
    return [child.returncode for child in children]
