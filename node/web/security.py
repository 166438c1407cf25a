"""Who may use the web UI: an access token per node start, the Host header, same-origin writes.

How it works
------------
* **Token** (as Jupyter does): ``WebServer`` draws 32 random bytes at each start. The URL
  that ``labelmesh ui`` prints carries it (``/?token=...``); a request with the right token
  gets it back as an HttpOnly, SameSite=Strict cookie (named after the port: two nodes on
  one host keep their own) and a redirect to the same page without it, so the token leaves
  the address bar and the history. Every other request needs the cookie; a node restart
  draws a new token, so old cookies stop working.
* **Host** (DNS rebinding): a page of another site whose name is made to resolve to
  127.0.0.1 reaches this server with that name in ``Host``. Only the names this server is
  reached by are accepted: the bound address, 127.0.0.1, localhost and [::1] with the
  bound port (any IP literal with that port when bound to 0.0.0.0 / ::).
* **CSRF**: a request that changes state (any method but GET/HEAD) also needs ``Origin``
  equal to this server's own origin and the header ``X-Labelmesh-Csrf`` equal to a value
  derived from the token, which the app's page carries (another site can neither read it
  nor send a custom header without a CORS preflight, which is never answered).
* Every response says ``Content-Security-Policy`` (scripts and styles from this origin
  only, no frames), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.

Refusals are plain: 400 for a bad Host, 401 without a valid token (with what to do),
403 for a write without the same-origin proof.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode


CSRF_HEADER = "x-labelmesh-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
#: served bytes of items (any media type a requester chose) never run as a page of this origin
BLOB_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def allowed_hosts(host: str, port: int) -> tuple[frozenset[str], bool]:
    """(exact Host values accepted, whether any IP literal with ``port`` is accepted too)."""
    names = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    names.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    wildcard = ipaddress.ip_address(host).is_unspecified
    return frozenset(names), wildcard


def _host_ok(value: str, exact: frozenset[str], wildcard: bool, port: int) -> bool:
    if value.lower() in exact:
        return True
    if not wildcard:
        return False
    h, sep, p = value.rpartition(":")
    if not sep or p != str(port):
        return False
    h = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    try:
        ipaddress.ip_address(h)  # IP literals only: a rebinding attack needs a DNS name
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware in front of the whole web app (see the module docstring)."""

    def __init__(self, app, *, token: str, host: str, port: int):
        self.app = app
        self.token = token
        self.host = host
        self.csrf = csrf_value(token)
        self.refused = {"host": 0, "token": 0, "csrf": 0}
        self.set_port(port)

    def set_port(self, port: int) -> None:
        """The port the server listens on (known only once bound when it was 0)."""
        self.port = port
        self.cookie_name = f"labelmesh_{port}"
        self.exact, self.wildcard = allowed_hosts(self.host, port)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets: none served
            return await send({"type": "websocket.close", "code": 1008})
        headers = _headers(scope)
        host = headers.get("host", "")
        if not _host_ok(host, self.exact, self.wildcard, self.port):
            self.refused["host"] += 1
            return await _plain(send, 400, "Host header not allowed: open the UI at the address `labelmesh ui` "
                                           "prints (this refusal protects against DNS rebinding).")
        method = scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.get("token")
        if given is not None and method in SAFE_METHODS:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.refused["token"] += 1
                return await _plain(send, 401, "wrong or expired token: the node draws a new one at each start; "
                                               "run `labelmesh ui` for the current URL.")
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
                              if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = (f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict")
            return await _respond(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                                                  (b"content-type", b"text/plain")])
        if not self._cookie_ok(headers.get("cookie", "")):
            self.refused["token"] += 1
            if scope["path"].startswith("/api/"):
                return await _json(send, 401, {"error": {"code": 401, "message":
                                   "not logged in: open the URL that `labelmesh ui` prints (the node's token changes at each start)"}})
            return await _plain(send, 401, "This node's UI needs its access token. Run `labelmesh ui --data-dir DIR` "
                                           "and open the URL it prints (the token changes at each node start).")
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is None or not self._same_origin(origin, host, scope):
                self.refused["csrf"] += 1
                return await _json(send, 403, {"error": {"code": 403, "message": "cross-origin request refused (Origin)"}})
            if not hmac.compare_digest(headers.get(CSRF_HEADER, "").encode(), self.csrf.encode()):
                self.refused["csrf"] += 1
                return await _json(send, 403, {"error": {"code": 403, "message": f"missing or wrong {CSRF_HEADER} header"}})
        await self.app(scope, receive, _with_security_headers(send, scope["path"]))

    def _cookie_ok(self, raw: str) -> bool:
        if not raw:
            return False
        c = SimpleCookie()
        try:
            c.load(raw)
        except Exception:
            return False
        m = c.get(self.cookie_name)
        return m is not None and hmac.compare_digest(m.value.encode(), self.token.encode())

    def _same_origin(self, origin: str, host: str, scope) -> bool:
        scheme = scope.get("scheme", "http")
        return origin.lower() == f"{scheme}://{host}".lower()


def csrf_value(token: str) -> str:
    """The value the page sends in X-Labelmesh-Csrf: derived from the token (the cookie
    itself is HttpOnly, so scripts never see the token)."""
    return hmac.new(token.encode(), b"labelmesh-csrf", hashlib.sha256).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _headers(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name = k.decode("latin-1").lower()
        val = v.decode("latin-1")
        out[name] = f"{out[name]}; {val}" if name == "cookie" and name in out else val
    return out


def _with_security_headers(send, path: str):
    csp = BLOB_CSP if path.startswith("/blob/") else CSP

    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            extra = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                     (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
            if b"cache-control" not in names:
                extra.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers + [h for h in extra if h[0] not in names]}
        await send(message)

    return wrapped


async def _respond(send, status: int, body: bytes, headers: list) -> None:
    base = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + base})
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, text: str) -> None:
    await _respond(send, status, text.encode(), [(b"content-type", b"text/plain; charset=utf-8")])


async def _json(send, status: int, obj) -> None:
    await _respond(send, status, json.dumps(obj).encode(), [(b"content-type", b"application/json")])
