"""Errors of the p2p adapter. All derive from the project's root error."""
from __future__ import annotations

from ..errors import NodeError


class P2PError(NodeError):
    """A peer-to-peer operation failed (dial, stream, timeout, size limit, remote error)."""


class P2PConfigError(P2PError):
    """A :class:`P2PConfig` value is out of range; the message names the field."""


class P2PTimeoutError(P2PError):
    """A bounded p2p operation (request, dial) did not finish in time."""


class P2PRemoteError(P2PError):
    """The remote request handler failed; the message carries the remote's short reason."""
