"""How a long job (encoding rows, training steps) talks to the user. The library calls these methods and stays
silent; the CLI passes a subclass that draws it (view.py). One protocol for every job."""

from __future__ import annotations


class Progress:
    """Silent by default. A job calls `start`, then `advance` (rows done) or `update` (step reached, with its
    metrics), `note` for a line worth keeping, and `stop`; the same object may run several jobs in turn."""

    def note(self, message: str) -> None:
        """A line of text for the user (the run folder, an evaluation result, an interrupt)."""

    def start(self, description: str, total: int | None = None) -> None:
        """A job begins: `total` units when known (training steps), else a count that only grows (rows)."""

    def advance(self, amount: int) -> None:
        """`amount` more units are done."""

    def update(self, completed: int, metrics: dict[str, float] | None = None) -> None:
        """The job has reached `completed` units; `metrics` are the latest logged values (loss, learning rate)."""

    def stop(self) -> None:
        """The job has ended (or failed): clear what was drawn."""
