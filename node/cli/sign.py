"""``labelmesh sign``: sign an annotation batch offline, for any node to submit.

No running node is needed (nor a network connection): the network id comes from the data
dir's genesis (or ``--genesis FILE``), the key from the data dir's keystore. The output
is the raw signed envelope, which any node of that network accepts with
``annotations_submit {"raw": HEX}`` (``labelmesh rpc annotations_submit``); the key never
leaves this machine. Label names need ``--labels`` (the task's label names, in order),
since the task itself is not read here; items and labels are checked against the task by
the node that receives the batch.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from protocol.errors import LabelmeshError
from protocol.genesis import genesis_from_json
from protocol.messages import AnnotationBatch, sign_message, validate_basic

from ..config import resolve_config
from ..keystore import Keystore
from .accounts import unlock_passphrase
from .common import CliError, out

#: Bytes read from a --genesis file at most (a genesis lists at most 1,000 validators and
#: 100,000 reputation and balance entries: far below this).
MAX_GENESIS_BYTES = 64 << 20


def _genesis(args):
    path = Path(args.genesis) if args.genesis else None
    if path is None:
        dd = Path(args.data_dir)
        try:
            cfg, _ = resolve_config(dd)
        except LabelmeshError as e:
            raise CliError(f"cannot read the config of {dd} ({e}); give the network's genesis with --genesis FILE") from None
        path = dd / cfg.genesis
    try:
        if path.stat().st_size > MAX_GENESIS_BYTES:
            raise CliError(f"{path} is over {MAX_GENESIS_BYTES >> 20} MiB: not a genesis file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read the genesis {path}: {e}; give the network's genesis with --genesis FILE") from None
    return genesis_from_json(text)  # GenesisError (a LabelmeshError) says what is wrong


def _pairs(args) -> list[tuple[int, int]]:
    words = args.pairs
    if len(words) % 2:
        raise CliError("give ITEM LABEL pairs, e.g. `labelmesh sign TASK 0 1 4 0` (or label names with --labels)")
    names = [x.strip() for x in args.labels.split(",")] if args.labels else []
    out: dict[int, int] = {}
    for i in range(0, len(words), 2):
        try:
            item = int(words[i])
        except ValueError:
            raise CliError(f"item must be an integer index, got {words[i]!r}") from None
        lab = words[i + 1]
        if lab.isdigit():
            label = int(lab)
        elif lab in names:
            label = names.index(lab)
        else:
            raise CliError(f"label {lab!r} is not an index" + (f" nor one of --labels {names}" if names else
                           "; give the task's label names in order with --labels a,b,c to use names"))
        if out.get(item, label) != label:
            raise CliError(f"item {item} is labelled twice with different labels")
        out[item] = label
    return sorted(out.items())


def cmd_sign(args) -> int:
    try:
        task_id = bytes.fromhex(args.task_id)
    except ValueError:
        task_id = b""
    if len(task_id) != 32:
        raise CliError("TASK must be the task id in full: 64 hex characters")
    created_at = args.created_at if args.created_at is not None else int(time.time() * 1000)
    if not 0 <= created_at < 1 << 63:
        raise CliError("--created-at must be milliseconds since the epoch")
    genesis = _genesis(args)
    pairs = tuple(_pairs(args))
    ks = Keystore(Path(args.data_dir))
    sk = ks.signing_key(args.account, passphrase=unlock_passphrase(ks, args.account))  # KeystoreError says why
    batch = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=task_id, created_at=created_at, labels=pairs)
    msg = sign_message(batch, sk, genesis.network_id)
    v = validate_basic(msg, genesis.params)
    if not v.ok:
        raise CliError(f"the batch would be rejected: {v.reason}")
    r = {"raw": msg.raw.hex(), "batch_id": msg.compute_id(genesis.network_id).hex(), "annotator": batch.annotator.hex(),
         "task_id": task_id.hex(), "created_at": created_at, "labels": len(batch.labels),
         "network": genesis.name, "network_id": genesis.network_id.hex()}
    out(args, r, r["raw"])
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register ``sign`` on ``sub``."""
    s = sub.add_parser("sign", parents=[common],
                       help="sign an annotation batch offline (no running node); prints the raw envelope for "
                            "annotations_submit {raw} on any node",
                       description="Sign labels for a task with a local account, offline: prints the raw signed "
                                   "envelope (hex; --json adds its batch id). Submit it through any node of the "
                                   "network: labelmesh rpc annotations_submit '{\"raw\": \"HEX\"}'.")
    s.add_argument("task_id", metavar="TASK", help="the task id, 64 hex characters")
    s.add_argument("pairs", nargs="+", metavar="ITEM LABEL", help="item index and label (index, or a name of --labels)")
    s.add_argument("--account", default="default", help="local account that signs (default: default)")
    s.add_argument("--labels", help="the task's label names in order, comma-separated, to give labels by name")
    s.add_argument("--genesis", metavar="FILE", help="the network's genesis.json (default: the data dir's)")
    s.add_argument("--created-at", type=int, metavar="MS",
                   help="the batch's timestamp, ms since the epoch (default: now); must not be after the task's "
                        "deadline. The same labels and --created-at give the same batch (and id)")
    s.set_defaults(fn=cmd_sign)
