"""One root error for everything the protocol package raises.

Messages are written for the person who has to fix the input: they say what was
wrong and, where it helps, what would be accepted.
"""


class LabelmeshError(Exception):
    """Root of every error raised by labelmesh code."""


class DecodeError(LabelmeshError):
    """Bytes are not a well-formed, canonical labelmesh message."""


class ValidationError(LabelmeshError):
    """A value is well-formed but breaks a rule (size, range, consistency)."""


class GenesisError(LabelmeshError):
    """The genesis file is missing, malformed or inconsistent."""


class ParamsError(LabelmeshError):
    """A parameter is out of its documented range."""
