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
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tunery.errors import TuneryError

SETTING = "webhooks_to_private_addresses"
MAX_URL_CHARS = 2000
MAX_NAME_CHARS = 253
LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""A DNS label as a request can name it (RFC 1123); names arrive in their IDNA form."""


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


EMBEDDING_IPV4 = tuple(
    ipaddress.IPv6Network(prefix)
    for prefix in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)
"""IPv6 prefixes whose last 32 bits are an IPv4 address a translator or the host itself may
reach: IPv4-compatible, -mapped, SIIT, and NAT64's well-known and local-use prefixes."""


def _is_public(address: str) -> bool:
    """Whether ``address`` is public, and so is any IPv4 address it carries (mapped,
    translated by NAT64, 6to4): a NAT64 gateway reaches ``64:ff9b::a00:5`` as 10.0.0.5."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        carried = [ip.sixtofour] if ip.sixtofour is not None else []
        if any(ip in prefix for prefix in EMBEDDING_IPV4):
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if not all(_is_public(str(inner)) for inner in carried):
            return False
    return ip.is_global and not ip.is_multicast


def _numeric_addresses(host: str) -> set[str] | None:
    """The addresses ``host`` spells out numerically, or None for a name."""
    try:
        found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return {str(entry[4][0]) for entry in found}


def registration_problem(url: str, *, allow_private: bool) -> str | None:
    """Why the server will not, or could never, send to ``url``, judged without DNS; None
    if it may. Only a URL a request can go to passes: http(s), a port from 1 to 65535, a
    host that is an IP address without an interface zone or a DNS name of valid labels."""
    if len(url) > MAX_URL_CHARS:
        return f"the URL is longer than {MAX_URL_CHARS} characters"
    if any(ord(character) < 0x21 or ord(character) == 0x7F for character in url):
        return "the URL has spaces or control characters; percent-encode them"
    try:
        parts = urlsplit(url)
    except ValueError as error:
        return f"not a URL this server can call ({error}); give http(s)://HOST[:PORT]/PATH"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "give an http:// or https:// URL with a host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"{parts.netloc[:200]!r} has no valid port (1 to 65535)"
    host = parts.hostname
    problem = _host_problem(host)
    if problem is not None:
        return problem
    if allow_private:
        return None
    name = host.rstrip(".")  # a fully qualified name's trailing dot names the same host
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is this server itself; {_only_public()}"
    numeric = _numeric_addresses(name)
    if numeric and not all(_is_public(address) for address in numeric):
        return f"{host} is a loopback, private or link-local address; {_only_public()}"
    return None


def _host_problem(host: str) -> str | None:
    """Why ``host`` names nothing a request could reach, or None."""
    shown = repr(host[:100])
    if ":" in host:  # an IPv6 literal
        if "%" in host:
            return f"{shown} names an interface of this server (a zone); give a global address"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{shown} is not an IPv6 address"
        return None
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = _ascii(name)
    except UnicodeError:
        return f"{shown} is not a valid host name"
    labels = ascii_name.split(".")
    if len(ascii_name) > MAX_NAME_CHARS or not all(LABEL.fullmatch(label) for label in labels):
        return (
            f"{shown} is not a valid host name (labels of 1 to 63 letters, digits and "
            "hyphens, at most 253 characters)"
        )
    for label in labels:
        if label.lower().startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                return f"{shown} is not a valid host name (label {label[:63]!r})"
    return None


def pinned(url: str, *, allow_private: bool) -> Destination:
    """Resolve ``url``'s host and pin the request to one checked address.

    Raises RefusedDestination when the host does not resolve, or (unless ``allow_private``)
    when any of its addresses is not public.
    """
    parts = urlsplit(url)
    try:
        host = _ascii(parts.hostname or "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (UnicodeError, ValueError) as error:
        raise RefusedDestination(
            f"{url[:200]!r} is not a URL this server can call: {error}"
        ) from None
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedDestination(f"cannot resolve {host}: {error}") from None
    addresses = [str(entry[4][0]) for entry in found]
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


def _ascii(host: str) -> str:
    """``host`` as it goes on the wire: international names in their IDNA form."""
    return host.encode("idna").decode("ascii") if not host.isascii() else host


def _only_public() -> str:
    return f"this server sends webhooks to public addresses only (setting {SETTING})"
