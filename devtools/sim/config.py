"""Every knob of the simulation, with its unit, in one frozen dataclass.

The defaults describe the network of issue #21's figure ``sim_1000_nodes_hour_s``: 1,000
nodes on WAN links (one-way egress delay 20-100 ms per node, so pair RTTs of 40-200 ms,
1% packet loss, 20 Mbit/s), 100 validators, a steady label load, the reference node's
GossipSub and sync settings. ``validate()`` says what is out of range in words.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


class SimConfigError(ValueError):
    """A simulation parameter is out of range (the message names it)."""


@dataclass(frozen=True)
class SimConfig:
    # ---- size and time ----
    nodes: int = 1000                   # nodes in the network, 2..20000
    validators: int = 100               # genesis validators (weight 1 each), run by the first nodes; 1..1000
    duration_s: float = 3600.0          # simulated seconds of steady load
    drain_s: float = 900.0              # bound on the quiet phase after the load (open tasks close and
                                        # certify, churned nodes return and catch up); the run stops earlier
                                        # once every node holds the same set and every task is certified
    seed: int = 1                       # same seed -> same report (wall times aside)

    # ---- topology and links ----
    topology: str = "random"            # "random": each node dials `peers` random nodes;
                                        # "devnet": like scripts/devnet (node 0 plus the two previous nodes)
    peers: int = 8                      # outbound connections per node (random topology); ~2x that in total
    delay_min_ms: float = 20.0          # one-way egress delay of a node's link (netem delay), uniform in
    delay_max_ms: float = 100.0         # [min, max]; a pair's RTT is the sum of the two nodes' delays
    delays_ms: tuple = ()               # per-node egress delays instead (a real devnet's, to compare)
    jitter_ms: float = 5.0              # per-transmission jitter (normal, sd), never below zero delay
    loss: float = 0.01                  # packet loss per packet (netem loss): TCP retransmits, so a loss
                                        # delays a message (by RTT + rto_min_ms), it does not drop it
    rto_min_ms: float = 200.0           # Linux tcp_rto_min
    bandwidth_mbit: float = 20.0        # egress rate of every node's link (netem rate); 0 = unlimited
    drop: float = 0.0                   # application-level loss of a gossip copy (overflowing py-libp2p
                                        # peer queues): repaired by IHAVE/IWANT and sync
    hop_ms: float = 2.0                 # median time a node takes to validate and store a gossip message
                                        # before forwarding it (lognormal)
    hop_sigma: float = 0.5              # lognormal sigma of that time
    per_envelope_ms: float = 0.08       # extra validation time per envelope of a bundle (decode + verify)
    clock_offset_ms: float = 50.0       # node clocks are off by uniform(-x, x) ms

    # ---- GossipSub (node/net/config.py P2PConfig) ----
    d: int = 6                          # mesh degree target
    d_low: int = 4                      # graft below
    d_high: int = 12                    # prune above
    heartbeat_s: float = 1.0
    gossip_window: int = 3              # heartbeats a message id is advertised in IHAVE
    d_lazy: int = 6                     # IHAVE targets per heartbeat: max(d_lazy, gossip_factor x non-mesh peers)
    gossip_factor: float = 0.25
    prune_backoff_s: float = 60.0
    idontwant: bool = True              # gossipsub v1.2: a node tells its mesh it has a message
    publish_rate_per_s: float = 10.0    # publisher token bucket (pubsub messages/s); envelopes queued
    publish_burst: int = 2              # meanwhile leave as one bundle (protocol/bundle.py)
    max_payload_bytes: int = 512 * 1024

    # ---- wire sizes (bytes) of what py-libp2p adds; see docs/scaling.md for how they were measured ----
    msg_overhead: int = 420             # per pubsub message copy: RPC framing, from/seqno/topic/signature/key
                                        # fields, sender record, noise + yamux frame headers
    packet_overhead: int = 66           # per TCP packet (IP + TCP with timestamps) plus its share of ACKs
    mtu_payload: int = 1448             # TCP payload per packet
    ctrl_overhead: int = 120            # per control RPC (IHAVE / IWANT / IDONTWANT / GRAFT), framing included
    ihave_id_bytes: int = 94            # per message id in IHAVE / IWANT / IDONTWANT (hex of from || seqno)
    stream_overhead: int = 220          # per sync request/response: new stream, multistream-select, framing

    # ---- anti-entropy sync (node/services/sync.py) ----
    sync: bool = True
    sync_interval_s: float = 3.0
    sync_backoff: int = 4               # an idle peer is synced with up to this many times less often
    sync_settle_s: float = 1.0
    sync_hot_s: float = 2.0
    sync_max_defer_s: float = 10.0

    # ---- churn ----
    churn: float = 0.0                  # share of time a node is down (0 = none); validators too
    churn_down_s: float = 120.0         # mean length of a down period (exponential), s

    # ---- workload ----
    task_interval_s: float = 60.0       # a new task every this many seconds (exponential gaps)
    task_duration_s: float = 300.0      # deadline - created_at
    items_per_task: int = 1000
    item_bytes: int = 32                # inline text per item
    classes: int = 4
    batches_per_s: float = 3.0          # annotation batches submitted per second, network-wide (Poisson)
    labels_per_batch: int = 100
    annotators: int = 400
    requesters: int = 20
    gold_share: float = 0.5             # share of tasks with committed gold (5% of items), revealed at deadline
    gateways: int = 0                   # nodes that take submissions (0 = every node)

    # ---- protocol parameters (genesis overrides) ----
    grace_period_ms: int = 5000
    round_timeout_ms: int = 5000
    reputation_lag_ms: int = 600_000
    finality_tick_s: float = 0.25       # how often a node ticks its finality machines

    # ---- observers ----
    observers: str = "fast"             # "fast": a non-validator's certificate time is the arrival of the
                                        # precommit that completes a quorum (protocol.finality.is_quorum);
                                        # "full": every node runs a real TaskFinality fed in arrival order

    def validate(self) -> "SimConfig":
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise SimConfigError(f"{name}={getattr(self, name)!r}: {what}")

        need(2 <= self.nodes <= 20_000, "nodes", "must be in 2..20000")
        need(1 <= self.validators <= min(1000, self.nodes), "validators", "must be in 1..min(1000, nodes)")
        need(self.duration_s > 0, "duration_s", "must be > 0")
        need(self.drain_s >= 0, "drain_s", "must be >= 0")
        need(self.topology in ("random", "devnet"), "topology", "must be 'random' or 'devnet'")
        need(self.peers >= 1, "peers", "must be >= 1 (at most nodes-1 are dialed)")
        need(0 <= self.delay_min_ms <= self.delay_max_ms, "delay_max_ms", "must be >= delay_min_ms >= 0")
        need(not self.delays_ms or (len(self.delays_ms) == self.nodes and min(self.delays_ms) >= 0), "delays_ms",
             "must be empty or one delay >= 0 per node")
        need(self.jitter_ms >= 0, "jitter_ms", "must be >= 0")
        need(0 <= self.loss < 0.5, "loss", "must be in [0, 0.5)")
        need(0 <= self.drop < 1, "drop", "must be in [0, 1)")
        need(self.bandwidth_mbit >= 0, "bandwidth_mbit", "must be >= 0 (0 = unlimited)")
        need(self.hop_ms >= 0 and self.hop_sigma >= 0 and self.per_envelope_ms >= 0, "hop_ms",
             "hop_ms, hop_sigma and per_envelope_ms must be >= 0")
        need(1 <= self.d_low <= self.d <= self.d_high, "d", "must satisfy 1 <= d_low <= d <= d_high")
        need(self.heartbeat_s > 0, "heartbeat_s", "must be > 0")
        need(self.gossip_window >= 1 and self.d_lazy >= 0, "gossip_window", "gossip_window >= 1, d_lazy >= 0")
        need(self.publish_rate_per_s > 0 and self.publish_burst >= 1, "publish_rate_per_s",
             "rate must be > 0 and burst >= 1")
        need(self.sync_interval_s > 0 and self.sync_backoff >= 1, "sync_interval_s", "must be > 0 (backoff >= 1)")
        need(0 <= self.churn < 0.5, "churn", "must be in [0, 0.5): a validator quorum must stay up")
        need(self.churn_down_s > 0, "churn_down_s", "must be > 0")
        need(self.task_interval_s > 0 and self.task_duration_s >= 2, "task_interval_s",
             "task_interval_s > 0 and task_duration_s >= 2")
        need(1 <= self.items_per_task <= 100_000, "items_per_task", "must be in 1..100000")
        need(2 <= self.classes <= 64, "classes", "must be in 2..64")
        need(self.batches_per_s >= 0, "batches_per_s", "must be >= 0")
        need(1 <= self.labels_per_batch <= self.items_per_task, "labels_per_batch", "must be in 1..items_per_task")
        need(self.annotators >= 1 and self.requesters >= 1, "annotators", "annotators and requesters >= 1")
        need(0 <= self.gold_share <= 1, "gold_share", "must be in [0, 1]")
        need(0 <= self.gateways <= self.nodes, "gateways", "must be in 0..nodes")
        need(self.observers in ("fast", "full"), "observers", "must be 'fast' or 'full'")
        need(self.finality_tick_s > 0, "finality_tick_s", "must be > 0")
        return self

    def with_overrides(self, **kw) -> "SimConfig":
        known = {f.name for f in fields(self)}
        for k in kw:
            if k not in known:
                raise SimConfigError(f"unknown simulation parameter {k!r}")
        return replace(self, **kw).validate()

    def as_dict(self) -> dict:
        return asdict(self)


#: Link presets: the WAN of issue #21 (``scripts/devnet up --netns --wan``), and loopback.
LINKS = {
    "wan": dict(delay_min_ms=20.0, delay_max_ms=100.0, jitter_ms=5.0, loss=0.01, bandwidth_mbit=20.0),
    "lan": dict(delay_min_ms=0.1, delay_max_ms=0.5, jitter_ms=0.05, loss=0.0, bandwidth_mbit=1000.0),
    "loopback": dict(delay_min_ms=0.0, delay_max_ms=0.0, jitter_ms=0.0, loss=0.0, bandwidth_mbit=0.0),
}
