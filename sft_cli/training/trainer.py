"""TRL's SFTTrainer, with the loss computed where it is cheapest.

TRL computes its loss through a fused LM head (chunked log-probabilities, entropy and accuracy of every position).
On GPUs that saves the memory of the full logits; on CPU it costs about a third more per step than the model's own
loss (SmolLM2-135M, 1,040 tokens, fwd+bwd 13.4 s vs 10.0 / 7.3 s, measured here). So on CPU the model computes its
loss, and only the token accuracy is added to the logs; on CUDA TRL's path runs unchanged. On CPU the loss is
`chunked_loss.py`'s (`training.chunked_loss`, on by default): the LM head over trained tokens only, in chunks,
never the full logits; models whose logits are more than the head's product, and runs of several processes,
keep the model's own loss.

Two additions to what TRL logs: trained tokens per optimizer step (summed over processes), and, with several
data sources, evaluation per source: eval_<label>_loss for each source's eval rows, and eval_loss over all of them
(the sources' losses weighted by their eval batches, as one eval set would average them), logged once per evaluation
so early stopping and the best checkpoint can watch either.
"""

from __future__ import annotations

import time

import torch
from transformers import Trainer
from trl import SFTTrainer

from sft_cli.encoding.encode import IGNORE
from sft_cli.training.chunked_loss import chunked_loss, head_of, hidden_states_out
from sft_cli.training.environment import CHUNKED, FUSED
from sft_cli.training.generation_eval import GenerationEval

GENERATED = ("_exact_match", "_contains", "_generate_seconds")  # what generation adds to an evaluation's metrics


class SftTrainer(SFTTrainer):
    def __init__(self, *args, loss: str, generation: GenerationEval | None = None, **kwargs):
        """`loss`: the environment's choice (environment.choose_loss); `generation`: scores answers generated at
        every evaluation (training.eval_generate)."""
        super().__init__(*args, **kwargs)
        self.generation = generation
        self.fused_loss = loss == FUSED
        self.chunked_loss = loss == CHUNKED
        self._trained_tokens = torch.zeros((), dtype=torch.long)  # this process's, since the last log
        self._logged_step = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss summed over trained tokens and divided by their count in the whole (accumulated) batch."""
        if model.training:
            trained_here = (inputs["labels"][..., 1:] != IGNORE).sum()
            self._trained_tokens = self._trained_tokens.to(trained_here.device) + trained_here
        if self.fused_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        head = head_of(model) if self.chunked_loss else None
        if head is not None:
            loss, trained, correct = self._chunked_loss(model, head, inputs, num_items_in_batch)
            outputs = {"loss": loss}
        else:
            # use_cache=False as TRL passes it: the packed mask of models keeping their own attention needs it
            loss, outputs = Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, True, num_items_in_batch)
            with torch.no_grad():
                labels = inputs["labels"][..., 1:]
                mask = labels != IGNORE
                correct, trained = (outputs.logits[..., :-1, :][mask].argmax(-1) == labels[mask]).sum(), mask.sum()
        with torch.no_grad():
            counts = torch.stack([correct, torch.as_tensor(trained, device=correct.device)])[None]  # over processes
            correct, total = self.accelerator.gather_for_metrics(counts).view(-1, 2).sum(0).tolist()
        mode = "train" if model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append(correct / total if total else 0.0)
        return (loss, outputs) if return_outputs else loss

    def _chunked_loss(self, model, head, inputs, num_items_in_batch):
        """The loss as `Trainer.compute_loss` scales it, from the hidden states the model returns with its head
        passed through."""
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        with hidden_states_out(head):
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        loss, trained, correct = chunked_loss(outputs.logits, head, inputs["labels"], items)
        if self.args.average_tokens_across_devices and items is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss, trained, correct

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process is here, so the count can be summed over them
            steps = max(self.state.global_step - self._logged_step, 1)
            trained = self.accelerator.gather(self._trained_tokens.reshape(1)).sum().item()
            logs["trained_tokens_per_step"] = round(trained / steps, 1)
            self._trained_tokens = torch.zeros_like(self._trained_tokens)
            self._logged_step = self.state.global_step
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, *args, metric_key_prefix: str = "eval", **kwargs):
        """The eval loss, and with `generation` the scores of answers generated for the first eval rows."""
        output = super().evaluation_loop(dataloader, *args, metric_key_prefix=metric_key_prefix, **kwargs)
        if self.generation is not None:
            output.metrics.update(self.generation.score(self.model, dataloader.dataset, metric_key_prefix))
        return output

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Per-source evaluation when the eval sets are a {label: rows} mapping (see the module docstring)."""
        sets = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(sets, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        started, metrics, weighted, examples = time.time(), {}, 0.0, 0
        for label, rows in sets.items():
            output = self.evaluation_loop(
                self.get_eval_dataloader(rows),
                description=f"Evaluation ({label})",
                prediction_loss_only=True,
                ignore_keys=ignore_keys,
                metric_key_prefix=f"{metric_key_prefix}_{label}",
            )
            loss = output.metrics[f"{metric_key_prefix}_{label}_loss"]
            metrics.update({k: v for k, v in output.metrics.items() if k.endswith(GENERATED)})
            metrics[f"{metric_key_prefix}_{label}_loss"] = loss
            weighted, examples = weighted + loss * output.num_samples, examples + output.num_samples
        metrics[f"{metric_key_prefix}_loss"] = weighted / max(examples, 1)
        for score in GENERATED[:2]:  # over all sources, as the loss: each source's rows weighted equally
            per_source = [v for k, v in metrics.items() if k.endswith(score) and k != f"{metric_key_prefix}{score}"]
            if per_source:
                metrics[f"{metric_key_prefix}{score}"] = round(sum(per_source) / len(per_source), 4)
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - started, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
