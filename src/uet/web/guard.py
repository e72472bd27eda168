"""The dashboard's guard: one ASGI layer in front of every route that decides, before any
page is built, whether a request may be answered at all.

In order, for every request (HTTP and Server-Sent Events alike):

1. **Host** — the `Host` header must name the address the server is bound to (or, bound to
   a loopback address, one of the loopback names; bound to every interface, an IP literal
   or one of this machine's names), or a name given with `--allow-host`. Anything else is
   refused with 400: a page of another site whose name was rebound to this address (DNS
   rebinding) cannot read the ledger.
2. **Method** — GET and HEAD only; every other method gets 405 (the dashboard never
   changes the ledger).
3. **Token** — when the server has one (required for any address that is not loopback):
   a `uet_token` cookie, or `Authorization: Bearer TOKEN`, must carry it. A `?token=` link
   (the one `uet web` prints) sets the cookie and redirects to the same page without the
   token in its address, so that it is neither bookmarked nor kept in the browser's
   history. Compared in constant time.

Every response then gets the security headers: a Content-Security-Policy that allows
scripts, styles and connections from the dashboard itself only (no inline script, no
`eval`, no plug-ins, no framing), `nosniff`, no referrer, no caching of ledger pages.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable, Iterable, MutableMapping
from urllib.parse import parse_qsl, urlencode, urlsplit

LOG = logging.getLogger("uet.web")
COOKIE = "uet_token"
ALLOWED_METHODS = ("GET", "HEAD")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "ip6-localhost")

# ASGI, as Starlette and uvicorn type it
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Header = tuple[bytes, bytes]


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine only."""
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def allowed_host_names(bound: str, extra: Iterable[str] = ()) -> tuple[frozenset[str], bool]:
    """The names a request's Host header may carry for a server bound to `bound`, and
    whether any IP literal is allowed too (bound to every interface: an address literal
    cannot be rebound by a foreign site's DNS)."""
    names = {bound.lower().strip("[]")}
    names.update(n.lower().strip("[]") for n in extra)
    any_ip = False
    if is_loopback(bound):
        names.update(LOOPBACK_NAMES)
    elif _is_wildcard(bound):
        any_ip = True
        names.update(LOOPBACK_NAMES)
        host = socket.gethostname()
        names.update({host.lower(), socket.getfqdn(host).lower()})
    return frozenset(names), any_ip


def host_of(header: str) -> str | None:
    """The host name of a Host header value (`name`, `name:port`, `[v6]:port`), lowercased;
    None when the value is not one."""
    try:
        parts = urlsplit(f"//{header}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts.hostname or None


class Guard:
    """The ASGI layer described in this module's docstring."""

    def __init__(self, app: ASGIApp, *, bound_host: str, token: str | None = None,
                 allow_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        self.hosts, self.any_ip = allowed_host_names(bound_host, allow_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path = scope.get("path", "")
        status_seen: list[int] = []

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                extra = list(SECURITY_HEADERS)
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await _plain(send_secured, *refusal)
            elif self.token is not None and (await self._token_step(scope, headers,
                                                                    send_secured)):
                pass  # answered: redirected with the cookie, or refused
            else:
                await self.app(scope, receive, send_secured)
        finally:
            # one line per request, without the query string (it may hold the token)
            LOG.info("%s %s %s", scope.get("method"), path[:200],
                     status_seen[0] if status_seen else "-")

    def _refusal(self, scope: Scope, headers: dict[str, str]
                 ) -> tuple[int, str, list[Header]] | None:
        host = host_of(headers.get("host", ""))
        if host is None or not (host in self.hosts
                                or (self.any_ip and _is_ip_literal(host))):
            return 400, ("This dashboard answers only requests addressed to the host it "
                         "listens on (the Host header names another: refused against DNS "
                         "rebinding). Start `uet web --allow-host NAME` to serve it under "
                         "another name.\n"), []
        if scope.get("method") not in ALLOWED_METHODS:
            return 405, "The dashboard is read-only: only GET and HEAD are answered.\n", [
                (b"allow", b"GET, HEAD")]
        return None

    async def _token_step(self, scope: Scope, headers: dict[str, str], send: Send) -> bool:
        """Check the token; True when the request has been answered here."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given:
            if not self._matches(given[-1]):
                await _plain(send, 401, "That token is not this dashboard's token.\n", [])
                return True
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            raw = scope.get("raw_path") or scope.get("path", "/").encode("utf-8",
                                                                       "surrogateescape")
            target = raw.decode("latin-1") + (f"?{rest}" if rest else "")
            cookie = (f"{COOKIE}={given[-1]}; Path=/; HttpOnly; SameSite=Strict")
            await _plain(send, 303, "Signed in: on to the page.\n",
                         [(b"location", _header_value(target)),
                          (b"set-cookie", _header_value(cookie))])
            return True
        if self._matches(_cookie(headers.get("cookie", ""))) or self._matches(
                _bearer(headers.get("authorization", ""))):
            return False
        await _plain(send, 401, "This dashboard needs its token: open the link that `uet "
                                "web` printed (it carries ?token=...), or send "
                                "`Authorization: Bearer TOKEN`.\n", [])
        return True

    def _matches(self, candidate: str | None) -> bool:
        if candidate is None or self.token is None:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"),
                                   self.token.encode("utf-8", "surrogatepass"))


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        if key in headers and key == "host":
            headers[key] = ""  # two Host headers: ambiguous, refused
        else:
            headers[key] = value.decode("latin-1")
    return headers


def _cookie(header: str) -> str | None:
    try:
        morsel = SimpleCookie(header).get(COOKIE)
    except CookieError:
        return None
    return None if morsel is None else morsel.value


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _header_value(text: str) -> bytes:
    return text.encode("latin-1", "replace")


async def _plain(send: Send, status: int, text: str, headers: list[Header]) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
