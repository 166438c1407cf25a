"""Errors of the storage package. All derive from node.errors.NodeError (and so from
the project's root, LabelmeshError); messages say what to do."""
from __future__ import annotations

from ..errors import NodeError


class StoreError(NodeError):
    """Root of every error the storage package raises.  The message says what to do."""


class StoreFullError(StoreError):
    """The map cannot grow further or the filesystem is full.  Nothing of the failed write
    was stored; the store stays readable and writes work again once there is room."""


class StoreVersionError(StoreError):
    """The store on disk has a schema version this code does not understand."""


class BadInputError(StoreError, ValueError):
    """A record or an argument is malformed (wrong type, length or range)."""
