"""The root of the development tools' errors (it derives from the project's root)."""
from protocol.errors import LabelmeshError


class DevtoolsError(LabelmeshError):
    """A development tool cannot do what was asked; the message says why."""
