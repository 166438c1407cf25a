"""Genesis: the definition of a network, and its network id.

The genesis file is JSON for people (hex keys, named params). Its canonical form
is a msgpack array with every list sorted, and

    network_id = sha256("labelmesh/genesis/v1\\0" || canonical bytes)

so two nodes agree on the network iff they agree on every field of the genesis.

JSON layout::

    {"version": 1, "name": "devnet", "genesis_time_ms": 1790000000000,
     "validators": [{"account": "<hex32>", "weight": 1}, ...],
     "reputation": [{"account": "<hex32>", "domain": "", "weight": 65536}, ...],
     "balances":   [{"account": "<hex32>", "credits": 1000000}, ...],
     "params": {"grace_period_ms": 3000, ...}}

``reputation`` seeds the fixed-point prior weight (ONE = 65536) of known experts;
an empty domain means "every domain".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .codec import pack, sha256
from .errors import GenesisError, ParamsError
from .params import Params

GENESIS_TAG = b"labelmesh/genesis/v1\x00"
MAX_VALIDATORS = 1000
MAX_GENESIS_ENTRIES = 100_000


@dataclass(frozen=True)
class Genesis:
    name: str
    genesis_time_ms: int
    validators: tuple[tuple[bytes, int], ...]              # (account, weight), sorted
    reputation: tuple[tuple[bytes, str, int], ...] = ()    # (account, domain, fixed-point weight), sorted
    balances: tuple[tuple[bytes, int], ...] = ()           # (account, credits), sorted
    param_overrides: tuple[tuple[str, int], ...] = ()      # sorted by name
    version: int = 1
    params: Params = field(default=Params(), compare=False)

    def canonical_bytes(self) -> bytes:
        return pack([self.version, self.name, self.genesis_time_ms,
                     [list(v) for v in self.validators],
                     [list(r) for r in self.reputation],
                     [list(b) for b in self.balances],
                     [list(p) for p in self.param_overrides]])

    @property
    def network_id(self) -> bytes:
        return sha256(GENESIS_TAG + self.canonical_bytes())

    @property
    def total_validator_weight(self) -> int:
        return sum(w for _, w in self.validators)

    def validator_weight(self, account: bytes) -> int:
        for a, w in self.validators:
            if a == account:
                return w
        return 0

    def to_json(self) -> str:
        return json.dumps({
            "version": self.version,
            "name": self.name,
            "genesis_time_ms": self.genesis_time_ms,
            "validators": [{"account": a.hex(), "weight": w} for a, w in self.validators],
            "reputation": [{"account": a.hex(), "domain": d, "weight": w} for a, d, w in self.reputation],
            "balances": [{"account": a.hex(), "credits": c} for a, c in self.balances],
            "params": dict(self.param_overrides),
        }, indent=2, sort_keys=True) + "\n"


def make_genesis(name: str, genesis_time_ms: int, validators, reputation=(), balances=(),
                 params: dict[str, int] | None = None) -> Genesis:
    """Build a Genesis, sorting every list and validating it."""
    overrides = tuple(sorted((params or {}).items()))
    try:
        p = Params().with_overrides(dict(overrides))
    except ParamsError as e:
        raise GenesisError(f"genesis params: {e}") from None
    g = Genesis(name=name, genesis_time_ms=genesis_time_ms,
                validators=tuple(sorted((bytes(a), int(w)) for a, w in validators)),
                reputation=tuple(sorted((bytes(a), str(d), int(w)) for a, d, w in reputation)),
                balances=tuple(sorted((bytes(a), int(c)) for a, c in balances)),
                param_overrides=overrides, params=p)
    validate_genesis(g)
    return g


def validate_genesis(g: Genesis) -> None:
    if g.version != 1:
        raise GenesisError(f"unsupported genesis version {g.version}; this node knows version 1")
    if not g.name or len(g.name) > 64:
        raise GenesisError("genesis name must be 1..64 characters")
    if not 0 <= g.genesis_time_ms < 1 << 63:
        raise GenesisError("genesis_time_ms must be a non-negative 64-bit integer (ms since the epoch)")
    if not g.validators:
        raise GenesisError("genesis needs at least one validator")
    if len(g.validators) > MAX_VALIDATORS:
        raise GenesisError(f"at most {MAX_VALIDATORS} validators")
    for lst, what in ((g.reputation, "reputation"), (g.balances, "balances")):
        if len(lst) > MAX_GENESIS_ENTRIES:
            raise GenesisError(f"too many {what} entries (max {MAX_GENESIS_ENTRIES})")
    seen = set()
    for a, w in g.validators:
        if len(a) != 32:
            raise GenesisError("validator accounts must be 32-byte ed25519 public keys")
        if a in seen:
            raise GenesisError(f"validator {a.hex()} listed twice")
        seen.add(a)
        if not 1 <= w <= 1 << 32:
            raise GenesisError(f"validator {a.hex()} weight must be 1..2^32")
    for a, d, w in g.reputation:
        if len(a) != 32 or not 0 <= w <= g.params.max_weight:
            raise GenesisError(f"reputation entry {a.hex()}: bad key or weight out of 0..{g.params.max_weight}")
    for a, c in g.balances:
        if len(a) != 32 or not 0 <= c < 1 << 63:
            raise GenesisError(f"balance entry {a.hex()}: bad key or credits out of 0..2^63-1")


def _hex32(v, where: str) -> bytes:
    try:
        b = bytes.fromhex(v)
    except (TypeError, ValueError):
        raise GenesisError(f"{where}: expected a 64-character hex public key") from None
    if len(b) != 32:
        raise GenesisError(f"{where}: expected a 32-byte key, got {len(b)} bytes")
    return b


def genesis_from_json(text: str) -> Genesis:
    """Parse a genesis JSON document; raise GenesisError saying what to fix."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenesisError(f"genesis is not valid JSON: {e}") from None
    except RecursionError:
        raise GenesisError("genesis is not valid JSON: nested too deeply") from None
    if not isinstance(d, dict):
        raise GenesisError("genesis must be a JSON object")
    try:
        if d.get("version", 1) != 1:
            raise GenesisError(f"unsupported genesis version {d.get('version')}")
        name = d["name"]
        t = d["genesis_time_ms"]
        if not isinstance(name, str) or not isinstance(t, int):
            raise GenesisError("genesis name must be a string and genesis_time_ms an integer")
        vals = [(_hex32(v["account"], "validators"), int(v["weight"])) for v in d.get("validators", [])]
        reps = [(_hex32(r["account"], "reputation"), str(r.get("domain", "")), int(r["weight"]))
                for r in d.get("reputation", [])]
        bals = [(_hex32(b["account"], "balances"), int(b["credits"])) for b in d.get("balances", [])]
        params = d.get("params", {}) or {}
        if not isinstance(params, dict) or not all(isinstance(v, int) for v in params.values()):
            raise GenesisError("genesis params must be an object of integers")
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as e:
        raise GenesisError(f"genesis is missing or has a malformed field: {e}") from None
    return make_genesis(name, t, vals, reps, bals, params)
