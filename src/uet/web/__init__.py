"""`uet web`: a read-only dashboard of a ledger — runs, one run's timeline, events, patches
and gates, workers — served over HTTP, live by Server-Sent Events (extra `uet[web]`:
Starlette, Jinja2, uvicorn, sse-starlette).

    from uet.state import Database
    from uet.web import create_app
    app = create_app(Database("ledger.db", read_only=True))   # any ASGI server runs it

`serve()` is what the command runs: it binds the socket first (so the printed address is
the one that listens, port 0 included), then runs uvicorn on it.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

from uet.web.app import create_app
from uet.web.guard import is_loopback

__all__ = ["create_app", "serve", "bind", "is_loopback"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(db: Any, sock: socket.socket, *, host: str, token: str | None = None,
          allow_hosts: tuple[str, ...] = (), poll_interval: float = 0.25) -> None:
    """Serve the dashboard of `db` on the bound `sock` until SIGINT/SIGTERM. Request lines
    (method, path, status: never a query string, which may hold the token) go to stderr."""
    import uvicorn
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    web_log = logging.getLogger("uet.web")
    web_log.addHandler(handler)
    web_log.setLevel(logging.INFO)
    web_log.propagate = False
    app = create_app(db, host=host, token=token, allow_hosts=allow_hosts,
                     poll_interval=poll_interval)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            date_header=False, proxy_headers=False, lifespan="off",
                            timeout_graceful_shutdown=2, ws="none")
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the
    # handler that was there before: ours ends the command normally (exit 0), as a server
    # stopped on purpose should
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        web_log.removeHandler(handler)


class _Stopped(Exception):
    """A stop signal reached the command after the server had shut down."""


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)
