"""Node configuration: ``<data-dir>/config.toml``, overridable by environment
variables and command-line flags.

Fields (``labelmesh init`` writes the file, with a comment above each field)::

    genesis = "genesis.json"           # path of the network's genesis file, relative to the data dir
    listen = ["/ip4/127.0.0.1/tcp/0"]  # libp2p listen multiaddrs (port 0 = pick a free one)
    bootstrap = []                     # full multiaddrs (/ip4/../tcp/../p2p/<id>) of peers to dial at start
    rpc_socket = "node.sock"           # JSON-RPC Unix socket, relative to the data dir (mode 0600)
    log_level = "info"                 # debug | info | warning | error
    log_format = "text"                # text | json (one JSON object per line)
    log_levels = {}                    # per component, e.g. {sync = "debug", libp2p = "info"}
    metrics_listen = ""                # Prometheus /metrics on HOST:PORT (loopback only), "" = off
    http_listen = ""                   # the web UI on HOST:PORT (loopback unless --http-allow-remote), "" = off
    validator_account = ""             # local account that attests as a genesis validator ("" = none)
    follow_domains = ["*"]             # label-schema domains whose batches this node stores ("*" = all)
    retain_batches_days = 0            # drop a certified task's batches this long after its deadline (0 = keep)

Where a value comes from, highest first: a command-line flag (``labelmesh run
--log-level debug``), an environment variable ``LABELMESH_<FIELD>`` (e.g.
``LABELMESH_METRICS_LISTEN=127.0.0.1:9464``), the file, the default above.
List fields take a comma-separated environment value (``LABELMESH_BOOTSTRAP=a,b``);
``LABELMESH_LOG_LEVELS`` and ``--log-level`` take ``component=level`` pairs
(``sync=debug,libp2p=info``), merged per component over the file's table. A
component is one of node, rpc, sync, finality, store, blobs, metrics, p2p (our
adapter of libp2p) or libp2p (the library itself), or any logger name with a dot
(``libp2p.pubsub``).

``labelmesh config show`` prints the effective values and where each came from.
Values are validated at start; an error names the field, where the value came
from and the fix.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_FILE = "config.toml"
ENV_PREFIX = "LABELMESH_"
LEVELS = ("debug", "info", "warning", "error")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

FIELD_DOCS = {
    "genesis": "path of the network's genesis file, relative to the data dir",
    "listen": "libp2p listen multiaddrs (port 0 = pick a free one)",
    "bootstrap": "full multiaddrs (/ip4/../tcp/../p2p/<id>) of peers to dial at start",
    "rpc_socket": "JSON-RPC Unix socket, relative to the data dir (mode 0600)",
    "log_level": "debug | info | warning | error",
    "log_format": "text | json (one JSON object per line)",
    "log_levels": 'levels per component, e.g. {sync = "debug", libp2p = "info"}',
    "metrics_listen": 'Prometheus /metrics on HOST:PORT, loopback only (e.g. "127.0.0.1:9464"); "" = off',
    "validator_account": 'local account that attests as a genesis validator ("" = none)',
    "http_listen": 'web UI on HOST:PORT, e.g. "127.0.0.1:8080" (loopback unless run with --http-allow-remote); "" = off',
    "follow_domains": 'label-schema domains whose batches, gold and attestations this node stores, e.g. ["radiology"]; '
                      '["*"] = all (validators and archive nodes follow all; docs/scaling.md)',
    "retain_batches_days": 'days after a task\'s deadline its batches are kept once it is certified; 0 = keep everything '
                           '(archive); the task, certificate and result are always kept',
}


@dataclass(frozen=True)
class NodeConfig:
    genesis: str = "genesis.json"
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    rpc_socket: str = "node.sock"
    log_level: str = "info"
    log_format: str = "text"
    log_levels: dict[str, str] = field(default_factory=dict)
    metrics_listen: str = ""
    validator_account: str = ""
    http_listen: str = ""
    follow_domains: list[str] = field(default_factory=lambda: ["*"])
    retain_batches_days: float = 0

    def validate(self) -> "NodeConfig":
        """Check every field; raise ConfigError naming the field (``.field``) and the fix."""
        if not isinstance(self.genesis, str) or not self.genesis:
            raise _bad("genesis", "must name the genesis file, e.g. \"genesis.json\"")
        for name in ("listen", "bootstrap"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(a, str) and a.startswith("/") for a in v):
                raise _bad(name, "must be a list of multiaddr strings like \"/ip4/127.0.0.1/tcp/4001\"")
        if not self.listen:
            raise _bad("listen", "needs at least one address, e.g. \"/ip4/127.0.0.1/tcp/0\"")
        if self.log_level not in LEVELS:
            raise _bad("log_level", "must be debug, info, warning or error")
        if self.log_format not in ("text", "json"):
            raise _bad("log_format", "must be text or json")
        if not isinstance(self.log_levels, dict):
            raise _bad("log_levels", "must be a table of component = level, e.g. {sync = \"debug\"}")
        for comp, lvl in self.log_levels.items():
            if not isinstance(comp, str) or not _COMPONENT_RE.match(comp):
                raise _bad("log_levels", f"has a bad component name {comp!r}; use a logger name like sync or libp2p.pubsub")
            if lvl not in LEVELS:
                raise _bad("log_levels", f"level of {comp!r} must be debug, info, warning or error, not {lvl!r}")
        if not isinstance(self.rpc_socket, str) or not self.rpc_socket:
            raise _bad("rpc_socket", "must be a file name, e.g. \"node.sock\"")
        if not isinstance(self.metrics_listen, str):
            raise _bad("metrics_listen", "must be a string: \"\" (off) or HOST:PORT like \"127.0.0.1:9464\"")
        if self.metrics_listen:
            parse_metrics_listen(self.metrics_listen)
        if not isinstance(self.http_listen, str):
            raise _bad("http_listen", "must be a string: \"\" (off) or HOST:PORT like \"127.0.0.1:8080\"")
        if self.http_listen:
            parse_http_listen(self.http_listen)
        if not isinstance(self.validator_account, str) or (self.validator_account and not _ACCOUNT_RE.match(self.validator_account)):
            raise _bad("validator_account", "must be \"\" or a local account name (see `labelmesh account list`)")
        fd = self.follow_domains
        if not isinstance(fd, list) or not fd or not all(isinstance(d, str) and len(d.encode()) <= 256 for d in fd) \
                or len(fd) > 1024:
            raise _bad("follow_domains", "must be a list of 1..1024 domain names (at most 256 bytes each), "
                                         "e.g. [\"radiology\"], or [\"*\"] for every domain")
        if "*" in fd and len(fd) > 1:
            raise _bad("follow_domains", "lists \"*\" (every domain) with other domains; keep one or the other")
        if self.validator_account and "*" not in fd:
            raise _bad("follow_domains", "must be [\"*\"] on a validator (validator_account is set): "
                                         "validators follow every domain")
        r = self.retain_batches_days
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 36_500 or r != r:
            raise _bad("retain_batches_days", "must be a number of days in 0..36500 (0 = keep every batch)")
        return self

    def to_toml(self) -> str:
        lines = ["# labelmesh node configuration. Every field is optional (the default is used).",
                 "# Precedence: command-line flag > LABELMESH_<FIELD> environment variable > this file > default.",
                 "# `labelmesh config show` prints the effective values; docs/operations.md explains each field."]
        for f in fields(self):
            lines.append(f"# {FIELD_DOCS[f.name]}")
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _bad(name: str, what: str) -> ConfigError:
    e = ConfigError(f"config field '{name}' {what}")
    e.field = name  # type: ignore[attr-defined]
    return e


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_q(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_q(k)} = {_q(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v)
    return _q(v)


def parse_metrics_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> ("127.0.0.1", 9464). Loopback hosts only (the
    endpoint has no authentication); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _bad("metrics_listen", f"must be HOST:PORT like \"127.0.0.1:9464\" (or \"\" to turn metrics off), not {value!r}")
    if host != "localhost":
        try:
            loopback = ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise _bad("metrics_listen", f"host must be a loopback address (127.0.0.1 or localhost), not {host!r}: "
                                         "/metrics has no authentication; put a reverse proxy in front to expose it")
        return host, int(port)
    return "127.0.0.1", int(port)


def parse_http_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"localhost:8080"`` -> (host, port); port 0
    picks a free port. Any IP address parses: whether a non-loopback one may be bound is
    the web server's decision (node/web/server.py, --http-allow-remote)."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _bad("http_listen", f"must be HOST:PORT like \"127.0.0.1:8080\" (or \"\" for no web UI), not {value!r}")
    if host == "localhost":
        return "127.0.0.1", int(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise _bad("http_listen", f"needs an IP address (or localhost), not the name {host!r}") from None
    return host, int(port)


COMPONENTS = {"node": "labelmesh.node", "rpc": "labelmesh.rpc", "sync": "labelmesh.sync",
              "finality": "labelmesh.finality", "store": "labelmesh.store", "blobs": "labelmesh.blobs",
              "metrics": "labelmesh.metrics", "web": "labelmesh.web", "p2p": "node.p2p", "libp2p": "libp2p"}
"""Short component names for ``log_levels`` / ``--log-level COMPONENT=LEVEL`` and their loggers."""


def component_logger(name: str) -> str:
    """Component name -> logger name: ``sync`` -> ``labelmesh.sync``, ``p2p`` -> ``node.p2p``
    (see COMPONENTS); ``libp2p...`` and dotted names are taken as they are."""
    if name in COMPONENTS:
        return COMPONENTS[name]
    return name if name.startswith("libp2p") or "." in name else f"labelmesh.{name}"


def parse_level_pairs(text: str, what: str) -> dict[str, str]:
    """``"sync=debug, libp2p=info"`` -> {"sync": "debug", "libp2p": "info"}."""
    out = {}
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        comp, sep, lvl = part.partition("=")
        if not sep or not comp:
            raise ConfigError(f"{what}: expected component=level pairs like sync=debug, got {part!r}")
        out[comp.strip()] = lvl.strip().lower()
    return out


def _read_file(data_dir: Path) -> tuple[Path, dict[str, Any]]:
    p = Path(data_dir) / CONFIG_FILE
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_FILE} in {data_dir}: run `labelmesh init --data-dir {data_dir}` first") from None
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid TOML: nested too deeply") from None
    known = {f.name for f in fields(NodeConfig)}
    for k in d:
        if k not in known:
            raise ConfigError(f"{p}: unknown field '{k}'; known fields: {', '.join(sorted(known))}")
    return p, d


def load_config(data_dir: Path) -> NodeConfig:
    """The file's values over the defaults (no environment, no flags), validated."""
    p, d = _read_file(data_dir)
    try:
        return NodeConfig(**d).validate()
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Config values set by ``LABELMESH_<FIELD>`` variables in ``env``."""
    out: dict[str, Any] = {}
    for f in fields(NodeConfig):
        name = ENV_PREFIX + f.name.upper()
        if name not in env:
            continue
        raw = env[name]
        if f.name in ("listen", "bootstrap", "follow_domains"):
            out[f.name] = [x.strip() for x in raw.split(",") if x.strip()]
        elif f.name == "retain_batches_days":
            try:
                out[f.name] = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number of days, not {raw!r}") from None
        elif f.name == "log_levels":
            out[f.name] = parse_level_pairs(raw, name)
        else:
            out[f.name] = raw.strip()
    return out


def resolve_config(data_dir: Path, flags: Mapping[str, Any] | None = None,
                   env: Mapping[str, str] | None = None) -> tuple[NodeConfig, dict[str, str]]:
    """The effective config and where each value came from.

    Precedence: ``flags`` (field -> value, None = not given) > ``env``
    (``LABELMESH_<FIELD>``, default ``os.environ``) > the file > the default.
    ``log_levels`` is merged per component in the same order. Sources are
    "default", "file", "env LABELMESH_X", "flag --x"; a merged table lists them all.
    """
    env = os.environ if env is None else env
    path, file_values = _read_file(data_dir)
    layers = [("file", file_values),
              ("env", env_overrides(env)),
              ("flag", {k: v for k, v in (flags or {}).items() if v is not None})]
    values = NodeConfig().as_dict()
    sources = {k: "default" for k in values}
    for layer, d in layers:
        for k, v in d.items():
            if layer == "env":
                label = f"env {ENV_PREFIX}{k.upper()}"
            elif layer == "flag":
                label = "flag --" + {"log_levels": "log-level", "http_listen": "http"}.get(k, k.replace("_", "-"))
            else:
                label = layer
            if k == "log_levels" and isinstance(v, dict) and isinstance(values[k], dict):
                values[k] = {**values[k], **v}
                sources[k] = label if sources[k] == "default" else f"{sources[k]} + {label}"
            else:
                values[k] = v
                sources[k] = label
    try:
        cfg = NodeConfig(**values).validate()
    except ConfigError as e:
        name = getattr(e, "field", None)
        src = sources.get(name, "")
        where = f"{path}" if src == "file" else src
        raise ConfigError(f"{e} (value from {where})" if where and src != "default" else str(e)) from None
    return cfg, sources


def number_pairs(setting: str, text: str, kinds: Mapping[str, type], error: type[Exception]) -> dict[str, Any]:
    """Parse ``"a=1,b=2.5"`` (comma-separated field=number pairs, e.g. an environment
    variable named ``setting``). ``kinds`` maps each known field to ``int`` or ``float``, in
    the order an error lists them. Raises ``error`` naming the bad pair; ranges are the
    caller's to check."""
    values: dict[str, Any] = {}
    for part in text.split(","):
        name, sep, raw = part.strip().partition("=")
        if not sep or name not in kinds:
            raise error(f"{setting}: expected field=number pairs with fields "
                        f"{', '.join(kinds)}; got {part.strip()!r}")
        try:
            values[name] = kinds[name](raw)
        except ValueError:
            what = "an integer" if kinds[name] is int else "a number"
            raise error(f"{setting}: {name} must be {what}, got {raw!r}") from None
    return values
