"""Errors that reach a user: each names what is wrong, where, and what to change.

Every error carries a stable ``code`` (machine-readable), a ``message`` (what happened and
where) and a ``hint`` (what to change). ``transient`` tells a scheduler whether retrying the
same run could succeed; user errors are never transient.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

MAX_PROBLEMS = 20
"""The most problems an error lists; the rest are counted (``problems_total``), so a body of
a million bad items answers with twenty, not a million."""


class TuneryError(Exception):
    """Base of every error tunery reports to a user."""

    code = "error"
    transient = False

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class FieldProblem:
    """One reason a configuration was rejected: the dotted field path and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(TuneryError):
    """A recipe or payload is invalid; ``problems`` lists every reason, not just the first."""

    code = "invalid_config"

    def __init__(self, problems: list[FieldProblem], *, hint: str = "", total: int = 0) -> None:
        self.problems = problems[:MAX_PROBLEMS]
        self.problems_total = max(total, len(problems))
        """How many problems there were; ``problems`` holds the first ``MAX_PROBLEMS``."""
        super().__init__(
            f"invalid configuration: {summary(problems, self.problems_total)}", hint=hint
        )

    @classmethod
    def single(cls, field: str, message: str, *, hint: str = "") -> ConfigError:
        return cls([FieldProblem(field, message)], hint=hint)


def summary(problems: list, total: int | None = None) -> str:
    """The first ``MAX_PROBLEMS`` problems in one line, and how many more there were."""
    shown = "; ".join(str(problem) for problem in problems[:MAX_PROBLEMS])
    more = (total if total is not None else len(problems)) - min(len(problems), MAX_PROBLEMS)
    return f"{shown} (and {more} more)" if more > 0 else shown


PLAIN_WORDING = {
    "extra_forbidden": "unknown field",
    "float_parsing": "give a number, such as 0.0002 or 2e-4",
    "float_type": "give a number, such as 0.0002 or 2e-4",
    "int_parsing": "give a whole number, such as 8",
    "int_type": "give a whole number, such as 8",
    "int_from_float": "give a whole number, such as 8",
    "bool_parsing": "give true or false",
    "bool_type": "give true or false",
}
"""What a user reads instead of pydantic's wording ("Input should be a valid number, unable
to parse string as a number") for the errors a form or a recipe file meets most."""


def problems_from(error: ValidationError, *, whole: str = "recipe") -> list[FieldProblem]:
    """pydantic's errors as (dotted field, message) pairs a user can act on, the first
    ``MAX_PROBLEMS`` of them (``error.error_count()`` counts them all).

    ``whole`` names the value itself, for an error that belongs to no single field.
    """
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:MAX_PROBLEMS]:
        field = ".".join(str(part) for part in item["loc"]) or whole
        message = PLAIN_WORDING.get(item["type"]) or item["msg"].removeprefix("Value error, ")
        problems.append(FieldProblem(field, message))
    return problems


class UnacceptedWarnings(ConfigError):
    """A submission whose settings are far outside what usually works, not yet accepted:
    ``problems`` lists each one with its usual range."""

    code = "warnings_not_accepted"

    def __init__(self, problems: list[FieldProblem], *, hint: str = "") -> None:
        super().__init__(problems, hint=hint)
        self.message = f"settings far outside what usually works: {summary(problems)}"
        self.args = (self.message,)


@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong in a dataset file: where (1-based line, or row for Parquet) and what."""

    file: str
    message: str
    line: int | None = None
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.file}, {self.unit} {self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "unit": self.unit, "message": self.message}


class DatasetError(TuneryError):
    """Dataset files cannot be used; ``problems`` lists each one with its file and line."""

    code = "invalid_dataset"

    def __init__(self, problems: list[DatasetProblem], *, hint: str = "") -> None:
        self.problems = problems[:MAX_PROBLEMS]
        self.problems_total = len(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}", hint=hint)

    @classmethod
    def single(
        cls,
        file: str,
        message: str,
        *,
        line: int | None = None,
        unit: str = "line",
        hint: str = "",
    ) -> DatasetError:
        return cls([DatasetProblem(file, message, line, unit)], hint=hint)


class ModelLoadError(TuneryError):
    """The base model cannot be resolved or loaded (bad id, missing files, unsupported)."""

    code = "model_load_failed"


class TransientError(TuneryError):
    """A failure that a retry may fix: network errors, a lost download, a lost node."""

    code = "transient"
    transient = True


class RunPaused(TuneryError):
    """Training stopped at its owner's request after saving the checkpoint at ``step``."""

    code = "paused"

    def __init__(self, step: int) -> None:
        super().__init__(f"paused after step {step}, its checkpoint saved")
        self.step = step


class RunCancelled(TuneryError):
    """The run was asked to stop; nothing after the current step is produced."""

    code = "cancelled"
