"""One error hierarchy; every error carries the exit code the CLI returns for it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of every `edgeguard` command (the README's table)."""

    OK = 0
    FAILED = 1  # at least one file could not be protected
    USAGE = 2  # bad command line or configuration
    SETUP = 3  # model missing or corrupt, DNN target unavailable, folders unusable
    INTERNAL = 70  # a bug: EX_SOFTWARE


class EdgeguardError(Exception):
    """Base of every error edgeguard raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(EdgeguardError):
    exit_code = ExitCode.USAGE


class ConfigError(EdgeguardError):
    """Invalid configuration; `problems` holds one line per problem."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SetupError(EdgeguardError):
    """The environment cannot run the configured setup."""

    exit_code = ExitCode.SETUP


class ModelMissingError(SetupError):
    pass


class ModelChecksumError(SetupError):
    pass


class TargetUnavailableError(SetupError):
    pass


class FileError(EdgeguardError):
    """One input could not be protected.

    `stage` says where (probe, decode, detect, encode, verify, ...). `transient`
    errors (disk full, interrupted) leave the input where it is to be retried;
    the others are final and send the input to the failed folder.
    """

    def __init__(self, path: object, reason: str, *, stage: str, transient: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.stage = stage
        self.transient = transient


class InputError(FileError):
    """The input itself is bad: empty, truncated, not media, absurd dimensions.

    `incomplete`: what a file still arriving looks like (cut short, no index yet);
    the daemon gives such a file time for its writer to come back before failing it.
    """

    def __init__(self, path: object, reason: str, *, stage: str = "probe", incomplete: bool = False) -> None:
        super().__init__(path, reason, stage=stage)
        self.incomplete = incomplete


class Cancelled(FileError):
    """Work on a file was stopped (shutdown or time limit); nothing was written."""

    def __init__(self, path: object, reason: str = "cancelled", *, transient: bool = True) -> None:
        super().__init__(path, reason, stage="cancelled", transient=transient)
