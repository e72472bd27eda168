"""`uet web`: the read-only dashboard (extra `uet[web]`)."""

from __future__ import annotations

import re
import sys

import click

from uet.cli.common import Context, command, display_name, finite
from uet.errors import UetError, ValidationError

TOKEN_ENV = "UET_WEB_TOKEN"
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")


@command("web", json_option=False, epilog=(
    "\b\nExamples:\n  uet web                       # http://127.0.0.1:8765/\n"
    "  uet web --port 0              # any free port (printed)\n"
    "  UET_WEB_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe())') \\\n"
    "    uet web --host 0.0.0.0      # reachable from other machines: token required\n"
    "\nOn any address that is not loopback every request must carry the token: open the "
    "?token= link printed at start (it sets a cookie), or send `Authorization: Bearer "
    "TOKEN`. Requests whose Host header names another host are refused (400)."))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any address that is not loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token", envvar=TOKEN_ENV, default=None, show_envvar=True,
              help="Secret every request must carry (16+ characters: letters, digits, "
                   "'.', '_', '~', '-').")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another name the dashboard may be reached by (a proxy's, a DNS name "
                   "of this machine); repeatable.")
@click.option("--interval", type=click.FloatRange(min=0.05, max=10), default=0.25,
              show_default=True, callback=finite,
              help="Seconds between reads of the trail for live updates.")
def web(ctx: Context, host: str, port: int, token: str | None, allow_hosts: tuple[str, ...],
        interval: float) -> None:
    """Serve a read-only dashboard of the ledger: runs (filters, pages), each run's
    timeline, events, patches and gates, workers; live as the ledger changes; JSON of
    every page under /api/."""
    try:
        from uet.web import bind, is_loopback, serve
    except ImportError as exc:
        raise UetError(f"uet web needs the web extra ({exc.name} is missing): "
                       "pip install 'uet[web]'") from None
    if token is not None and not _TOKEN.match(token):
        raise ValidationError(
            "the token must be 16 to 256 characters of letters, digits, '.', '_', '~' or "
            "'-' (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())')",
            field="token")
    if token is None and not is_loopback(host):
        raise ValidationError(
            f"--host {host} lets other machines reach the ledger: give --token (or set "
            f"${TOKEN_ENV}) so that every request must carry it", field="token")
    with ctx.open() as db:
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        address = sock.getsockname()
        shown_host = _url_host(host)
        base = f"http://{shown_host}:{address[1]}/"
        click.echo(f"uet web: serving {display_name(db.db_path)} (read-only) at {base}")
        if token is not None:
            click.echo(f"open {base}?token={token}")
        click.echo("Ctrl-C stops it.", err=True)
        sys.stdout.flush()
        with sock:
            serve(db, sock, host=host, token=token, allow_hosts=allow_hosts,
                  poll_interval=interval)


def _url_host(host: str) -> str:
    import ipaddress
    import socket
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if address.is_unspecified:
        return socket.gethostname()
    return f"[{address}]" if address.version == 6 else str(address)


COMMANDS = (web,)
