"""The ways a request can be turned down. Each carries a one-line, user-facing reason."""


class NbenvError(Exception):
    """Base: the message is shown to the person as is."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(NbenvError):
    """The request itself is malformed: unknown image, bad SHA, bad flag."""

    exit_code = 2


class Refused(NbenvError):
    """Well-formed but not allowed now: missing role, policy not met, frozen."""

    exit_code = 3


class Conflict(NbenvError):
    """The environments changed between reading and writing (lost compare-and-swap)."""

    exit_code = 4


class ConfigError(NbenvError):
    """The configuration file is invalid; raised at start-up."""

    exit_code = 78
