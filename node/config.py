"""Node configuration: ``<data-dir>/config.toml``.

Every field, its meaning and default (``labelmesh init`` writes this file)::

    genesis = "genesis.json"          # path of the network's genesis file, relative to the data dir
    listen = ["/ip4/127.0.0.1/tcp/0"] # libp2p listen multiaddrs (port 0 = pick a free one)
    bootstrap = []                    # full multiaddrs (/ip4/../tcp/../p2p/<id>) of peers to dial at start
    rpc_socket = "node.sock"          # JSON-RPC Unix socket, relative to the data dir (mode 0600)
    log_level = "info"                # debug | info | warning | error
    log_format = "text"               # text | json
    validator_account = ""            # local account that attests as a genesis validator ("" = none)

Values are validated at start; an error names the field and the fix.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class NodeConfig:
    genesis: str = "genesis.json"
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    rpc_socket: str = "node.sock"
    log_level: str = "info"
    log_format: str = "text"
    validator_account: str = ""

    def validate(self) -> "NodeConfig":
        if not isinstance(self.genesis, str) or not self.genesis:
            raise ConfigError("config field 'genesis' must name the genesis file")
        for name in ("listen", "bootstrap"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(a, str) and a.startswith("/") for a in v):
                raise ConfigError(f"config field '{name}' must be a list of multiaddr strings like \"/ip4/127.0.0.1/tcp/4001\"")
        if not self.listen:
            raise ConfigError("config field 'listen' needs at least one address")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("config field 'log_level' must be debug, info, warning or error")
        if self.log_format not in ("text", "json"):
            raise ConfigError("config field 'log_format' must be text or json")
        if not isinstance(self.rpc_socket, str) or not self.rpc_socket:
            raise ConfigError("config field 'rpc_socket' must be a file name")
        return self

    def to_toml(self) -> str:
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines = ["# labelmesh node configuration (see `labelmesh init --help` and README)"]
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                lines.append(f"{f.name} = [" + ", ".join(q(x) for x in v) + "]")
            else:
                lines.append(f"{f.name} = {q(v)}")
        return "\n".join(lines) + "\n"


def load_config(data_dir: Path) -> NodeConfig:
    p = Path(data_dir) / CONFIG_FILE
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_FILE} in {data_dir}: run `labelmesh init --data-dir {data_dir}` first") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    known = {f.name for f in fields(NodeConfig)}
    for k in d:
        if k not in known:
            raise ConfigError(f"{p}: unknown field '{k}'; known fields: {', '.join(sorted(known))}")
    try:
        return NodeConfig(**d).validate()
    except TypeError as e:
        raise ConfigError(f"{p}: {e}") from None
