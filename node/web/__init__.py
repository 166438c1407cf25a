"""The node's web UI: a labeling app, requester pages and a network dashboard in the browser.

Off by default; ``labelmesh run --http 127.0.0.1:8080`` (or ``http_listen`` in config.toml)
serves it on a loopback address, ``labelmesh ui`` prints the URL with its access token.
``server.py`` holds the HTTP server and its routes, ``security.py`` the checks every
request passes (token, Host, same-origin writes), ``static/`` the pages (plain ES modules,
no build step, nothing fetched from elsewhere). The pages call the node's RPC methods
(node/rpc/methods/) through ``/api/METHOD``; nothing here decides anything about the network.
"""
from .server import WEB_METHODS, WebError, WebServer

__all__ = ["WEB_METHODS", "WebError", "WebServer"]
