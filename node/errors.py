"""Errors of the node package. All derive from protocol.errors.LabelmeshError."""
from protocol.errors import LabelmeshError


class NodeError(LabelmeshError):
    """Something about the node's setup or state that the operator can fix."""


class ConfigError(NodeError):
    """The data dir, config file or a flag is wrong; the message names the fix."""


class KeystoreError(NodeError):
    """An account key is missing, unreadable or already exists."""
