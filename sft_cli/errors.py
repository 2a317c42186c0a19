"""Errors a user can fix. The CLI prints them as `error:`/`hint:` and exits 2; bugs keep their traceback."""

from __future__ import annotations


class SftError(Exception):
    """A problem in the user's input: a message, and a hint on how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self):
        # raised in a worker process and re-raised in the main one: keep message, hint and the subclass's fields
        return _restore, (type(self), self.__dict__)


class RecipeError(SftError):
    """The recipe is invalid; `problems` lists every problem found, each already located."""

    def __init__(self, source: str, problems: list[str], hint: str | None = None):
        noun = "problem" if len(problems) == 1 else "problems"
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} {noun}\n{body}", hint)
        self.problems = problems


class DataError(SftError):
    """A dataset file or row cannot be used."""


class Terminated(BaseException):
    """SIGTERM (a scheduler, `docker stop`, `kill`) raised as an exception, as Ctrl-C raises KeyboardInterrupt, so
    that a command cleans up on the way out: worker processes ended, partial folders removed, locks released."""


def _restore(cls, state: dict) -> SftError:
    error = cls.__new__(cls)
    Exception.__init__(error, state["message"])
    error.__dict__.update(state)
    return error
