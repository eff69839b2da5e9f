"""Pydantic's errors as edgeguard reports them, for the config and the model manifests alike.

A validator that checks several keys together re-raises pydantic's own errors with its
problems added, so every problem of a file is reported at once, each at its key path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails


def problem(loc: str | tuple[str | int, ...], value: Any, message: str) -> InitErrorDetails:
    """A problem at `loc` (a key, or a key path) that reads `message`."""
    return {
        "type": "value_error",
        "loc": (loc,) if isinstance(loc, str) else loc,
        "input": value,
        "ctx": {"error": ValueError(message)},
    }


def reraised(errors: Iterable[ErrorDetails], prefix: tuple[str | int, ...] = ()) -> list[InitErrorDetails]:
    """Pydantic's `errors`, ready to raise again, under `prefix` (where they were found)."""
    out: list[InitErrorDetails] = []
    for error in errors:
        details: InitErrorDetails = {"type": error["type"], "loc": (*prefix, *error["loc"]), "input": error["input"]}
        if "ctx" in error:
            details["ctx"] = error["ctx"]
        out.append(details)
    return out


def raised(title: str, problems: list[InitErrorDetails]) -> ValidationError:
    """One ValidationError holding every problem (raised in a validator, pydantic prefixes its place)."""
    return ValidationError.from_exception_data(title, problems)


def message(error: ErrorDetails) -> str:
    """The words of one error, without pydantic's "Value error, " prefix."""
    return error["msg"].removeprefix("Value error, ")
