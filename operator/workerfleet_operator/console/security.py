"""The console's authentication and CSRF tokens.

Called by :mod:`workerfleet_operator.console.app` on every request. Who may look: a request
with ``Authorization: Bearer <token>``, a browser session (a signed cookie the login form sets
after checking the same token), or, when configured, a trusted auth proxy's user header.
Every write (POST) must carry the CSRF token derived from that identity. Keys are random per
process: a restart ends every session, which is cheap for a console.

The user header is believed only on a connection from a trusted proxy's address
(:attr:`AuthSettings.trusted_proxies`; loopback by default, a proxy beside the console). Anyone
else who reaches the console could send it too and be any user: such a request is refused
whole (:func:`untrusted_proxy_header`), not merely left unauthenticated, so a proxy missing from
the list shows up as a clear 403 instead of a sign-in page.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SESSION_COOKIE = "wf_console_session"
SESSION_SECONDS = 8 * 3600.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
"""The proxies trusted when none are named: a proxy in the same pod (or on the same host)."""


def parse_trusted_proxies(texts: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``texts``, each a CIDR (``10.0.0.0/24``) or one address (``10.0.0.7``).

    Raises ValueError naming the first text that is neither."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {text!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class AuthSettings:
    """How the console authenticates; at least one way must be configured.

    ``trusted_proxies``: the peers whose ``proxy_header`` is believed (unused without one)."""

    token: str | None = None
    proxy_header: str | None = None
    trusted_proxies: tuple[Network, ...] = LOOPBACK
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if not self.token and not self.proxy_header:
            raise ValueError("the console needs a token or a trusted auth-proxy header")


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def check_token(settings: AuthSettings, offered: str) -> bool:
    """Whether ``offered`` is the console token (constant time)."""
    return bool(settings.token) and hmac.compare_digest(
        offered.encode(), (settings.token or "").encode()
    )


def build_session_cookie(settings: AuthSettings, now: float | None = None) -> str:
    """A signed session value: issue time and its signature."""
    issued = str(int(time.time() if now is None else now))  # truncated: never in the future
    return f"{issued}.{_sign(settings.key, 'session|' + issued)}"


def check_session_cookie(settings: AuthSettings, value: str, now: float | None = None) -> bool:
    """Whether ``value`` is a session this process issued and it has not expired."""
    issued, _, signature = value.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(
        signature, _sign(settings.key, "session|" + issued)
    ):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return 0 <= age <= SESSION_SECONDS


def is_trusted_proxy(settings: AuthSettings, peer: str | None) -> bool:
    """Whether ``peer`` (the connection's address, never a forwarded one) is a trusted proxy."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False  # no address (a Unix socket, an unknown peer): nothing to trust
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return any(address in network for network in settings.trusted_proxies)


def _proxy_user(settings: AuthSettings, headers: dict[str, str]) -> str:
    """The user the proxy header names ("" without one, or when the header is not configured)."""
    if not settings.proxy_header:
        return ""
    return headers.get(settings.proxy_header.lower(), "").strip()


def untrusted_proxy_header(
    settings: AuthSettings, headers: dict[str, str], peer: str | None
) -> str | None:
    """Why a request must be refused, or None: it carries the proxy's user header but comes from
    a peer that is not a trusted proxy, so anyone who can reach the console may have written it."""
    if not _proxy_user(settings, headers) or is_trusted_proxy(settings, peer):
        return None
    return (
        f"the {settings.proxy_header} header came from {peer or 'an unknown address'}, "
        "which is not a trusted auth proxy (--trusted-proxy, console.auth.trustedProxies)"
    )


def identify(
    settings: AuthSettings, headers: dict[str, str], cookies: dict[str, str], peer: str | None
) -> str | None:
    """The identity of a request (used to derive its CSRF token), or None: not authenticated.

    ``peer``: the connection's address; the proxy header counts only from a trusted proxy."""
    user = _proxy_user(settings, headers)
    if user and is_trusted_proxy(settings, peer):
        return "proxy|" + user
    auth = headers.get("authorization", "")
    scheme, _, offered = auth.partition(" ")
    if scheme.lower() == "bearer" and check_token(settings, offered.strip()):
        return "bearer"
    session = cookies.get(SESSION_COOKIE, "")
    if session and check_session_cookie(settings, session):
        return "session|" + session
    return None


def describe_identity(settings: AuthSettings, identity: str | None) -> str:
    """Who ``identity`` is, for the audit log, never a secret: the proxy's user
    (``proxy:ana``), ``token:bearer``, or ``token:session-<12 hex>`` for a signed-in browser.

    The session's part is a keyed digest of the cookie, not the cookie (which would let anyone
    reading the log act as that session): it tells one sign-in's writes from another's within
    this process. Everyone holding the token is the same ``token`` here; names need the proxy.
    ``-`` when not signed in."""
    if identity is None:
        return "-"
    kind, _, value = identity.partition("|")
    if kind == "proxy":
        return "proxy:" + value
    if kind == "session":
        return "token:session-" + _sign(settings.key, "audit|" + value)[:12]
    return "token:" + kind


def build_csrf_token(settings: AuthSettings, identity: str) -> str:
    """The CSRF token of ``identity``: every form carries it, every write checks it."""
    return _sign(settings.key, "csrf|" + identity)


def check_csrf_token(settings: AuthSettings, identity: str, offered: str) -> bool:
    """Whether ``offered`` is the CSRF token of ``identity`` (constant time)."""
    return hmac.compare_digest(offered, build_csrf_token(settings, identity))


WRONG_TOKEN_LIMIT = 10
"""Wrong tokens one client address may offer per :data:`WRONG_TOKEN_WINDOW_SECONDS`."""
WRONG_TOKEN_WINDOW_SECONDS = 60.0
CLIENTS_TRACKED = 10_000
"""Client addresses remembered at most (the oldest are forgotten first): bounded memory."""


@dataclass
class WrongTokens:
    """Wrong console tokens by client address, to slow down guessing: past
    :data:`WRONG_TOKEN_LIMIT` in a window, a client is refused (HTTP 429) until its oldest
    wrong try leaves the window. A long random token is out of reach anyway; this keeps a
    short one from being found by trying. Clients behind one proxy share an address."""

    limit: int = WRONG_TOKEN_LIMIT
    window_seconds: float = WRONG_TOKEN_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, collections.deque[float]] = field(default_factory=dict)

    def seconds_blocked(self, client: str) -> int:
        """Whole seconds until ``client`` may try again (0: it may now)."""
        tries = self._seen.get(client)
        if tries is None:
            return 0
        now = self.clock()
        while tries and now - tries[0] >= self.window_seconds:
            tries.popleft()
        if not tries:
            del self._seen[client]
            return 0
        if len(tries) < self.limit:
            return 0
        return max(1, math.ceil(self.window_seconds - (now - tries[0])))

    def record(self, client: str) -> None:
        """``client`` offered a wrong token."""
        tries = self._seen.pop(client, None) or collections.deque(maxlen=self.limit)
        tries.append(self.clock())
        self._seen[client] = tries  # re-inserted: the dict's order is the least recent first
        while len(self._seen) > CLIENTS_TRACKED:
            del self._seen[next(iter(self._seen))]
