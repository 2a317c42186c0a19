"""One process of tests/training/test_sharded_save.py: trains the tiny model a few AdamW steps and saves it through
sft's own save path (training/gather.py, then runs/folder.save_final_model). Started by torchrun with 2 processes, it
shards the model with torch's `fully_shard` (FSDP2) over gloo (accelerate builds FSDP only for GPU backends, so
torch is driven directly); started alone, it is the one-process run the sharded one must equal.

With --stop-at K DIR it stops after step K and writes a sharded checkpoint of weights and optimizer state to DIR
(torch.distributed.checkpoint, the format accelerate writes for FSDP2's SHARDED_STATE_DICT); with --resume DIR a
new group of processes reads it back and trains the remaining steps.

usage: sharded_save.py MODEL_DIR OUT_DIR full|lora STEPS [--stop-at K DIR | --resume DIR]
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft_cli.recipe.schema import Recipe
from sft_cli.runs.folder import save_final_model
from sft_cli.runs.record import RunRecord
from sft_cli.training.gather import full_state_dict
from sft_cli.training.setup import lora_model


def build(model_dir: str, kind: str, sharded: bool):
    """The model (LoRA-wrapped for `lora`), sharded layer by layer when several processes run, and its AdamW."""
    recipe = Recipe.model_validate(
        {
            "model": {"name": model_dir},
            "data": {"path": "x.jsonl"},
            "lora": {"r": 4, "dropout": 0.0} if kind == "lora" else None,
        }
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if recipe.lora:
        model = lora_model(model, recipe, [])
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in model.get_base_model().model.layers if recipe.lora else model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return recipe, model, optimizer


def checkpoint_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    return {"model": weights, "optimizer": optimizer_state}


def main(model_dir: str, out: str, kind: str, steps: int, options: list[str]) -> None:
    import torch.distributed.checkpoint as dcp

    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:
        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    recipe, model, optimizer = build(model_dir, kind, sharded)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = 0
    if options[:1] == ["--resume"]:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = checkpoint_state(model, optimizer)
        dcp.load(state, checkpoint_id=options[1])
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        first = json.loads((Path(options[1]) / "step.json").read_text())["step"]
    last = int(options[1]) if options[:1] == ["--stop-at"] else steps
    # the same batch on every rank: FSDP averages the ranks' gradients, so the step equals one process's
    batch = tokenizer(["The capital of France is Paris.", "Two and two make four, not five."], padding=True)
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    for _ in range(first, last):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if options[:1] == ["--stop-at"]:
        dcp.save(checkpoint_state(model, optimizer), checkpoint_id=options[2])
        if not sharded or torch.distributed.get_rank() == 0:
            (Path(options[2]) / "step.json").write_text(json.dumps({"step": last}))
    else:
        weights = full_state_dict(model)  # every rank: a collective when sharded
        if not sharded or torch.distributed.get_rank() == 0:
            record = RunRecord(recipe.encoding, (tokenizer.eos_token,), recipe.model, lora=bool(recipe.lora))
            Path(out).mkdir(parents=True, exist_ok=True)
            save_final_model(Path(out), model, tokenizer, record, weights)
    if sharded:
        torch.distributed.barrier()
        # every rank has written what it writes: leave without gloo's teardown, which can abort a rank ("terminate
        # called without an active exception") when the other one has already gone
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
