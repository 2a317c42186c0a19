"""Re-run `sft train` in several processes: torchrun on CPU (gloo), `accelerate launch` on GPUs or with a config."""

from __future__ import annotations

import subprocess
import sys
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
    """Run this very command again in N processes and return their exit code. Without a config: torchrun on
    CPU, where accelerate's own CPU launcher needs MPI; `accelerate launch --multi_gpu` on GPUs."""
    import torch

    cuda = torch.cuda.is_available()
    if accelerate_config:
        check_accelerate_config(accelerate_config, cuda)
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith(("--num-processes=", "--accelerate-config=")):
            skip = False
            continue
        if arg in ("--num-processes", "--accelerate-config"):
            skip = True
            continue
        args.append(arg)
    if accelerate_config or cuda:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        command += ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port, one machine
            "--nproc_per_node",
            str(num_processes),
        ]
    return subprocess.call([*command, "-m", "sft_cli", *args])
