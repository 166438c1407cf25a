"""Shared test harness: deterministic keys, a genesis, message builders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nacl.signing
import trio

from protocol.genesis import make_genesis
from protocol.messages import (
    DEST_ESCROW, ITEM_TEXT, SCHEMA_SINGLE_CHOICE, AnnotationBatch, Item, LabelSchema, LedgerVote, TaskAnnouncement,
    Transfer, sign_message,
)

T0 = 1_800_000_000_000  # a fixed "now" in ms
ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout: float = 240, check: bool = True, env: dict | None = None):
    """Run ``labelmesh ARGS`` (python -m node.cli) from the repository root; with ``check``,
    a non-zero exit fails the test with the command's output (stderr's last 4,000 chars)."""
    r = subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"labelmesh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}")
    return r


def key(n: int) -> nacl.signing.SigningKey:
    """Deterministic signing key number n."""
    return nacl.signing.SigningKey(n.to_bytes(4, "big") + bytes(28))


def pk(n: int) -> bytes:
    return bytes(key(n).verify_key)


def make_test_genesis(n_validators: int = 4, **params):
    return make_genesis("test", T0, [(pk(1000 + i), 1) for i in range(n_validators)],
                        [], [(pk(1), 10**9)], params)


def make_task(requester: int = 1, n_items: int = 10, labels=("a", "b", "c"), created_at: int = T0,
              duration_ms: int = 60_000, bounty: int = 0, nonce: int = 1, gold_commitment=None) -> TaskAnnouncement:
    return TaskAnnouncement(
        requester=pk(requester), nonce=nonce, created_at=created_at, deadline=created_at + duration_ms,
        title="t", schema=LabelSchema(SCHEMA_SINGLE_CHOICE, "d", tuple(labels)),
        items=tuple(Item(ITEM_TEXT, text=f"item {i}") for i in range(n_items)),
        redundancy=3, bounty=bounty, gold_commitment=gold_commitment, reward_rule=0)


def make_batch(annotator: int, task_id: bytes, pairs, created_at: int = T0 + 1000) -> AnnotationBatch:
    return AnnotationBatch(annotator=pk(annotator), task_id=task_id, created_at=created_at,
                           labels=tuple(sorted(pairs)))


def signed(body, signer: int, network_id: bytes):
    return sign_message(body, key(signer), network_id)


def escrow_raws(task_id: bytes, task: TaskAnnouncement, network_id: bytes, *, requester: int = 1, seq: int = 0,
                validators=(1000, 1001, 1002)) -> list[bytes]:
    """The requester's signed escrow order for ``task``'s bounty and ledger votes of
    ``validators`` (test genesis keys; 3 of the default 4 are a quorum) that certify it:
    ingest them and the task is funded, so its batches are accepted (docs/ledger.md)."""
    order = Transfer(sender=pk(requester), seq=seq, created_at=task.created_at, amount=task.bounty,
                     dest_type=DEST_ESCROW, dest=task_id)
    om = signed(order, requester, network_id)
    oid = om.compute_id(network_id)
    return [om.raw] + [signed(LedgerVote(pk(v), task.created_at, ((pk(requester), seq, oid),)), v, network_id).raw
                       for v in validators]


class DictContext:
    """protocol.messages.Context over plain dicts."""

    def __init__(self, genesis, tasks=None):
        self.genesis = genesis
        self.tasks = dict(tasks or {})

    def get_task(self, task_id):
        return self.tasks.get(task_id)

    def validator_weight(self, account):
        return self.genesis.validator_weight(account)


# ------------------------------------------------------------------ in-process nodes


class FakeClock:
    """The node's protocol clock (ms), set by the test."""

    def __init__(self, now: int = T0):
        self.now = now

    def __call__(self) -> int:
        return self.now


async def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    """Poll ``cond`` until true; TooSlowError after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.005)



def poll(cond, timeout: float, what: str, *, interval: float = 0.25, retry_on: tuple = ()):
    """Blocking wait for multi-process tests (devtools.processes.poll raising AssertionError):
    ``cond`` is called every ``interval`` s until truthy or ``timeout`` s pass; exceptions
    of the ``retry_on`` types count as "not yet", any other propagates."""
    from devtools.processes import poll as devnet_poll

    return devnet_poll(cond, timeout, what, interval=interval, retry_on=retry_on, error=AssertionError)


async def run_node(nursery, path, genesis, clock=None, **node_kwargs):
    """A Node (node.app) without a network, started in ``nursery`` on ``clock`` (default a
    FakeClock at T0); ``node_kwargs`` go to Node (rpc_socket, keystore, validator_key...)."""
    from node.app import Node

    node = Node(path, genesis, p2p_factory=None, clock=clock or FakeClock(), **node_kwargs)
    await nursery.start(node.run)
    return node


async def advance(clock, until, step=100):
    """Let protocol time run on to ``until`` in steps, yielding to the nodes between steps."""
    while clock.now < until:
        clock.now += step
        await trio.sleep(0.01)


def fake_node(net, name: str, path, genesis, **node_kwargs):
    """A Node on the in-memory network ``net`` (tests/fakenet.py), gossip validated by the
    node itself exactly as with libp2p; not started yet (``await nursery.start(node.run)``)."""
    from node.app import Node, attached_p2p

    return Node(path, genesis, p2p_factory=attached_p2p(net.make(name)), **node_kwargs)


class RpcConn:
    """The async side of node.rpc.client for in-process tests (the node runs in the same
    trio loop, so the blocking RpcClient would stall it): the same request lines
    (``request_line``), raw lines for hostile input, replies decoded as they are."""

    def __init__(self, stream):
        self.stream, self.buf = stream, b""

    @classmethod
    async def open(cls, socket_path) -> "RpcConn":
        return cls(await trio.open_unix_socket(str(socket_path)))

    async def send(self, data: bytes):
        await self.stream.send_all(data)

    async def recv(self, timeout: float = 20):
        """The next response line, decoded; None if the node closed the connection."""
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some(1 << 16)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method, params=None, id_=1):
        from node.rpc.client import request_line

        await self.send(request_line(method, params, id_))
        return await self.recv()
