"""What keeps the GAN Paint server to the person who started it.

- `HostGuard`: answers only requests whose Host header names the address the
  server is bound to (127.0.0.1, localhost, [::1] or the --host given), so a
  web page whose DNS name is rebound to 127.0.0.1 cannot reach it.
- `header_deadline_protocol`: uvicorn's h11 protocol, closing a connection
  that has not sent a request's line and headers within a deadline, so idle
  or trickling connections cannot hold uvicorn's connection cap
  (`limit_concurrency`, which answers 503 beyond it).
- `is_loopback`: whether an address is this machine only (else the mode warns).
"""
import ipaddress

import h11
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host):
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound):
    """Host header names that address a server bound to `bound` (an IPv6 address in brackets)."""
    bound = f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound
    return tuple(dict.fromkeys(name.lower() for name in (*LOOPBACK_NAMES, bound)))


def host_name(header):
    """The name part of a Host header value: 'localhost:8000' -> 'localhost', '[::1]:80' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.split(":")[0]


class HostGuard:
    """ASGI middleware: 403 for a request whose Host header is missing or names none of `hosts`."""

    def __init__(self, app, hosts):
        self.app, self.hosts = app, tuple(hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.hosts:
                detail = (f"Host {header!r} does not name this server; use one of "
                          f"{', '.join(self.hosts)}")
                return await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


def header_deadline_protocol(seconds):
    """An h11 protocol class (uvicorn.Config(http=...)) closing connections that have not sent a
    complete request line and headers `seconds` after they opened or after their last response."""

    class HeaderDeadline(H11Protocol):
        deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc):
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self):
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self):
            # their_state leaves IDLE once a request's line and headers have been read.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
