"""The verdicts the node itself gives (beyond protocol validation), as named values.

Code that branches on an outcome compares with these (``v == DUPLICATE``), never with
the text of a reason, like go-libp2p-pubsub's named rejection reasons; the text is what
clients and logs read (unchanged on the wire and in RPC errors). Validation verdicts of
the protocol have their own names (``protocol.messages.UNKNOWN_TASK``,
``protocol.finality.ROUND_AHEAD``).
"""
from __future__ import annotations

from protocol.messages import ignore

#: The message is stored already (or listed twice in one call): nothing to do, no penalty.
DUPLICATE = ignore("duplicate")
#: The same bytes were valid and left unstored by the storage policy (per-annotator batch
#: cap, finality storage bound), whose verdicts never change: not verified again.
DECLINED_BEFORE = ignore("not stored: declined before by the storage policy")
