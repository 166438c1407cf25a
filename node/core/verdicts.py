"""The verdicts the node itself gives (beyond protocol validation), as named values.

Code that branches on an outcome compares with these (``v == DUPLICATE``), never with
the text of a reason, like go-libp2p-pubsub's named rejection reasons; the text is what
clients and logs read (unchanged on the wire and in RPC errors). Validation verdicts of
the protocol have their own names (``protocol.messages.UNKNOWN_TASK``,
``protocol.finality.ROUND_AHEAD``).
"""
from __future__ import annotations

from protocol.messages import Outcome, Verdict, ignore

#: The message is stored already (or listed twice in one call): nothing to do, no penalty.
DUPLICATE = ignore("duplicate")
#: The same bytes were valid and left unstored by the storage policy (the keep rule of batches,
#: the finality storage bound), whose verdicts never change: not verified again.
DECLINED_BEFORE = ignore("not stored: declined before by the storage policy")
#: Stored, but other batches of the same annotator held here label some of the same items:
#: the labels are kept whatever happens, this batch only while it carries one that no batch
#: with a smaller id carries (protocol/keep.py). RPC status "accepted_overlapping".
KEPT_OVERLAPPING = Verdict(Outcome.ACCEPT, "stored; overlaps other batches of its annotator")
#: Valid, not stored: every label in it is carried by batches of the same annotator with
#: smaller ids, or is a third label for its item (protocol/keep.py). Never stored by any
#: node following the rule, so not worth fetching again. RPC status "redundant".
SURPLUS = ignore("not stored: its annotator's batches with smaller ids carry all its labels (redundant)")
