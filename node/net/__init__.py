"""The libp2p adapter: the only package of labelmesh that imports ``libp2p``.

One concern per module: ``config`` (P2PConfig, every tunable), ``errors``, ``patches``
(what we change in py-libp2p itself), ``router`` (our subclasses of its parts),
``framing`` (request/response frames) and ``host`` (P2PNode, which puts them together).

How it works
============

:class:`P2PNode` wraps one py-libp2p host (TCP + Noise + yamux), one GossipSub
router and one request/response dispatcher, and exposes a small, libp2p-free
API to the daemon (peer ids and multiaddrs are plain strings, payloads are
bytes, errors are :class:`P2PError`).

``run()`` builds everything, listens, dials the bootstrap peers, calls
``task_status.started()`` and then serves until cancelled. All background
work lives in one nursery inside ``run()``:

* one *drain task per subscription*: accepted gossip messages are copied out of
  py-libp2p straight into a per-topic channel of ``delivery_queue_size`` slots,
  and the drain task calls ``on_message`` for each (py-libp2p's own
  subscription channel holds only 32 messages and silently drops the rest);
* one *redial task per bootstrap peer*: dial at start, wait for the connection
  to drop, redial with capped exponential backoff and jitter, cut short by any new
  connection (a sign that the network is back); only the first failure of a series is
  logged at WARNING (then DEBUG, then INFO on recovery);
* short-lived tasks for ``on_peer_connected`` callbacks and offender
  disconnects.

Gossip validation: ACCEPT / REJECT / IGNORE
-------------------------------------------

py-libp2p 0.8.1 validators are ``fn(forwarder, msg) -> bool`` and any ``False``
counts as an invalid message against the forwarder (``Pubsub.push_msg`` calls
``scorer.on_invalid_message``). There is no IGNORE. We map the three outcomes
like this (``LabelmeshPubsub.validate_msg`` replaces the library's
``validate_msg``; signature checking stays in the library, before it):

* ACCEPT: return normally -> py-libp2p marks it seen, delivers it (to our
  ``notify_subscriptions`` override, which enqueues it for ``on_message``)
  and forwards it to the mesh.
* REJECT: raise ``ValidationError`` -> not delivered, not forwarded, the
  forwarder's P4 (invalid messages) counter is bumped by the library. We also
  remember the message id for ``seen_ttl_s`` (copies from other forwarders are
  rejected without re-running the validator, and penalised, as in
  go-libp2p-pubsub) and count the REJECT in our own offender table.
* IGNORE: raise ``ValidationError`` *after* arming a one-shot "suppress penalty"
  flag that our scorer subclass (``LabelmeshScorer.on_invalid_message``)
  consumes. ``push_msg`` calls the scorer synchronously right after the
  exception propagates (no checkpoint in between), so the flag can only be
  consumed by the message that armed it. Not delivered, not forwarded, no
  penalty, and not cached: a later copy (e.g. once the referenced task is known)
  is validated afresh.

A validator that raises, returns something else, or runs longer than
``validation_timeout_s`` counts as IGNORE (a bug or overload on our side must
not penalise peers). A copy of a message whose validation is still in flight
is IGNOREd as a duplicate (py-libp2p marks messages seen only after
validation, so without this the validator and ``on_message`` could see one
message twice). Messages with more than one topic are REJECTed (go/js peers
never send them). Our own publishes are *not* passed to the validator: the
caller builds and checks what it publishes. ``on_message`` is called only for
messages originated by other peers. Messages with a missing or bad signature
are dropped by py-libp2p before validation, silently and without penalty
(``strict_signing``; a library limitation).

Repeat offenders
----------------

py-libp2p scoring only drops an offender's messages; it never prunes or
disconnects it and it forgets the peer's score on disconnect. We keep our own
decayed REJECT counter per peer (a pubsub RPC that does not decode counts as one) (the node's one penalty policy,
node/policy/penalties.py; half-life ``invalid_message_half_life_s``, kept across
reconnects). When it reaches ``offender_reject_threshold`` the peer
is disconnected, put on the pubsub blacklist, and refused for
``offender_ban_s``: the Noise transport is wrapped (``GatedNoiseTransport``)
so that a handshake with a banned peer id fails in both directions (and the
bootstrap redial loop waits for the ban to expire). ``P2PConfig.validate`` insists that the offender
threshold is reached before the library's publish threshold silences the peer
(otherwise we would never see enough REJECTs to ban it).

Wire format of the request/response protocols
---------------------------------------------

One request and one response per stream, each a length-prefixed frame with a limit
checked before the body is read: ``node/net/framing.py``.

py-libp2p 0.8.1 defaults we override (verified in site-packages/libp2p)
----------------------------------------------------------------------

* ``new_swarm`` (``libp2p/__init__.py``) offers Noise, TLS, SECIO and
  *plaintext* unless ``sec_opt`` is given -> ``sec_opt`` = Noise only, muxer =
  yamux only (``muxer_opt``; the default also offers mplex), transports = TCP
  only (``transports=[TCP()]``).
* ``GossipSub.__init__`` (``pubsub/gossipsub.py``): heartbeat 120 s ->
  ``heartbeat_interval_s``; ``adaptive_gossip_enabled=True`` -> False;
  ``spam_protection_enabled=True`` (10 msg/s per peer and topic, *our own
  publishes included*, checked in ``GossipSub.publish``) -> False, we pace
  ourselves; ``eclipse_protection_enabled=True`` grafts up to 2 more peers per
  heartbeat, ignoring D_high, while the mesh has < 3 distinct IPs and a
  subscriber with another IP exists (small networks) -> False;
  ``_perform_opportunistic_grafting`` runs every
  heartbeat and, with equal scores, grafts 2 more peers each time until the
  mesh overflows D_high and is pruned (churn, GRAFT-flood warnings) ->
  disabled in ``LabelmeshGossipSub``.
* ``ScoreParams`` (``pubsub/score.py``): all thresholds ``-inf`` -> see
  :class:`P2PConfig` (scoring fields). Only P4 (invalid messages) is weighted;
  P1-P3, P5 (fed by py-libp2p's own IWANT/IHAVE/GRAFT heuristics, which
  misfire) and P7 (IP colocation: every devnet peer is 127.0.0.1) are 0, so an
  honest peer scores 0 and a peer scores -10 per REJECT (decaying). With the
  defaults: 1 REJECT changes nothing, 2 stop our forwarding to the peer
  (gossip threshold -15), 3 ban it (offender policy). The publish (-40) and
  graylist (-80) thresholds are backstops that the ban pre-empts by design.
* ``Swarm`` (``network/swarm.py``, ``network/auto_connector.py``): the
  auto-connector dials every peer in the peerstore (target 200 connections),
  logging INFO every cycle, and would re-dial peers we dropped on purpose ->
  replaced by a never-started instance; we redial bootstrap peers ourselves.
  ``RetryConfig`` makes 4 attempts per dial, logging ERROR each time -> 2;
  ``_NegativePeerCache`` refuses, for 60 s, every dial to a peer whose addresses all
  failed once: after a partition that kept a bootstrap peer out of reach, each of our
  redials within that minute failed at once without trying (this, and backoffs that had
  grown, kept healed links down for up to ~30 s) -> the bootstrap redial loop evicts its
  peer from that cache before each dial: our own backoff decides when to try;
  the per-attempt ERRORs of a few loggers (failed TCP dial, refused handshake,
  failed stream open) are dropped by ``LibraryNoiseFilter`` because we report
  those failures ourselves (P2PError, redial log).
* ``Pubsub.__init__`` starts a ``LastSeenCache`` sweeper *thread* that nobody
  stops -> Pubsub is created inside ``run()`` and ``seen_messages.stop()`` is
  called on teardown.
* ``Pubsub._teardown_if_connected`` (blacklisting a peer) races with the
  disconnect of the same peer and raises KeyError, which stops the pubsub service
  and the node -> replaced by a tolerant version in ``LabelmeshPubsub``.
* ``TCP`` listeners (``transport/tcp/tcp.py`` ``_set_reuse_flags``) always set
  SO_REUSEPORT, so a second node on a busy port starts fine and steals half the
  inbound connections -> ``run()`` first probes each fixed port with a plain
  bind and fails with :class:`P2PError` if it is taken.
* ``libp2p.utils.logging.setup_logging`` sets the ``libp2p`` logger
  ``propagate=False`` at import -> re-enabled (unless ``LIBP2P_DEBUG`` is set,
  in which case py-libp2p's own debug logging is left alone); the
  auto-connector logger (forced to INFO by the library) is set to WARNING.
* ``read_varint_prefixed_bytes``/``read_exactly`` give up after ~100 partial
  reads -> our own bounded reader for request/response (``framing.read_frame``),
  and ``read_exactly`` itself is replaced (``patches.patient_read_exactly``) where
  our stack calls it: Noise reads each 64 KiB record with it straight from the TCP
  socket, so a record arriving in more than 101 pieces (a slow link) dropped a
  healthy connection. (The pubsub reader, ``read_varint_prefixed_bytes_limited``,
  has no such limit.)
* ``Pubsub.write_msg`` is called on one peer stream by several tasks at once (the
  peer's sending loop, and message-cache replays and pending-publish flushes each
  time the peer connects or subscribes), and yamux locks per 64 KiB frame, not per
  write: a big RPC and another one interleaved, and the receiver read a misframed
  RPC -> ``LabelmeshPubsub.write_msg`` writes whole RPCs, one writer at a time per
  stream, and resets a stream it left half-written.
* ``Pubsub.stream_handler`` catches only stream errors: a ``DecodeError`` (a
  misframed or garbage RPC) or any other exception while handling a peer's RPCs
  went up the connection's task group and ended the process (found by the WAN
  devnet with a ~100 KB message) -> ``LabelmeshPubsub.stream_handler`` resets that
  stream whatever the error; an RPC that does not decode counts as an invalid
  message of the peer (``pubsub_rpcs_malformed``, penalised like a REJECT), any
  other error is logged and counted (``stream_errors``). Beneath it, every inbound
  stream of every protocol runs under ``P2PNode._guarded_stream_handler``: py-libp2p
  runs stream handlers in the connection's task group, so a raising handler of any
  protocol would end the node; now it costs that stream (``stream_errors``).
"""

from .config import GOSSIPSUB_PROTOCOLS, GossipOutcome, P2PConfig, p2p_tuning_from_env
from .errors import P2PConfigError, P2PError, P2PRemoteError, P2PTimeoutError
from .host import P2PNode

__all__ = [
    "GOSSIPSUB_PROTOCOLS",
    "GossipOutcome",
    "P2PConfig",
    "P2PConfigError",
    "P2PError",
    "P2PNode",
    "P2PRemoteError",
    "P2PTimeoutError",
    "p2p_tuning_from_env",
]
