"""The final model's weights, whole, from a run whose processes each hold a shard of them.

Under FSDP2 every parameter is a DTensor and under DeepSpeed ZeRO-3 a partitioned placeholder: rank 0 alone calling
`save_pretrained` blocks in a collective the other ranks never join (full fine-tuning) or reads freed storage
(LoRA), and under ZeRO-3 it would write empty tensors. So every rank gathers, and rank 0 writes what was gathered
(runs/folder.save_final_model). One process and DDP hold the whole model: nothing to gather.
"""

from __future__ import annotations


def sharding_of(model) -> str | None:
    """'fsdp2' or 'zero3' when this process holds only a shard of `model`'s weights, else None."""
    from torch.distributed.tensor import DTensor

    for parameter in model.parameters():
        if isinstance(parameter, DTensor):
            return "fsdp2"
        if hasattr(parameter, "ds_id"):  # DeepSpeed marks every parameter it partitions
            return "zero3"
    return None


def full_state_dict(model, accelerator=None, engine=None) -> dict | None:
    """The whole state dict of a sharded `model`, on the CPU, or None when this process holds it all already (the
    model then saves its own). Every rank must call it at the same point: it is a collective. Under ZeRO-3,
    accelerate consolidates the partitions through DeepSpeed's wrapper of the model (Trainer's `model_wrapped`)."""
    match sharding_of(model):
        case "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(model, options=options)
        case "zero3":
            # needs `zero3_save_16bit_model: true` (configs/accelerate/deepspeed.yaml)
            return accelerator.get_state_dict(engine)
        case _:
            return None
