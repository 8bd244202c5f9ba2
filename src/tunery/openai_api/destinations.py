"""Where the server may send webhook requests: public addresses only, unless the admin
allows private ones (``webhooks_to_private_addresses``).

A URL an account registers is a request the server will make on its behalf; aimed at
``127.0.0.1``, ``10.x``, ``169.254.169.254`` or the like, it would reach services that only
trust the server's own network. So a URL whose host is such an address in any spelling
(``127.1``, ``2130706433``, ``[::ffff:127.0.0.1]``) or a ``localhost`` name is refused when
registered, and every delivery resolves the host, refuses it if any address is not public,
and connects to the address it checked (the host name still sent as ``Host`` and as TLS
SNI, so certificates verify), so a name that re-resolves elsewhere between the check and
the request gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tunery.errors import TuneryError

SETTING = "webhooks_to_private_addresses"


class RefusedDestination(TuneryError):
    """The URL's host is (or resolves to) an address the server does not send to."""

    code = "refused_destination"


@dataclass(frozen=True)
class Destination:
    """A request target pinned to a checked address."""

    url: str
    """The URL with its host replaced by the address."""
    host_header: str
    sni_hostname: str | None
    """The name TLS verifies the certificate against (https with a host name)."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _numeric_addresses(host: str) -> set[str] | None:
    """The addresses ``host`` spells out numerically, or None for a name."""
    try:
        found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return {entry[4][0] for entry in found}


def registration_problem(url: str, *, allow_private: bool) -> str | None:
    """Why the server will not send to ``url``'s host, judged without DNS; None if it may."""
    host = urlsplit(url).hostname or ""
    if allow_private:
        return None
    name = host.rstrip(".")  # a fully qualified name's trailing dot names the same host
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is this server itself; {_only_public()}"
    numeric = _numeric_addresses(host)
    if numeric and not all(_is_public(address) for address in numeric):
        return f"{host} is a loopback, private or link-local address; {_only_public()}"
    return None


def pinned(url: str, *, allow_private: bool) -> Destination:
    """Resolve ``url``'s host and pin the request to one checked address.

    Raises RefusedDestination when the host does not resolve, or (unless ``allow_private``)
    when any of its addresses is not public.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedDestination(f"cannot resolve {host}: {error}") from None
    addresses = [entry[4][0] for entry in found]
    if not allow_private and not all(_is_public(address) for address in addresses):
        raise RefusedDestination(
            f"{host} resolves to a loopback, private or link-local address; {_only_public()}"
        )
    address = addresses[0]
    shown = f"[{address}]" if ":" in address else address
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}{shown}:{port}"
    default_port = parts.port is None
    return Destination(
        url=urlunsplit(parts._replace(netloc=netloc)),
        host_header=(f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}"),
        sni_hostname=host if parts.scheme == "https" and _numeric_addresses(host) is None else None,
    )


def _only_public() -> str:
    return f"this server sends webhooks to public addresses only (setting {SETTING})"
