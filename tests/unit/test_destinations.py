"""Webhook destinations: numeric spellings, names, and the request pinned to its address."""

from __future__ import annotations

import pytest

from tunery.webhooks.destinations import RefusedDestination, pinned, registration_problem


@pytest.mark.parametrize(
    "url",
    ["http://8.8.8.8/h", "https://hooks.example.com/h", "http://[2001:4860:4860::8888]/h"],
)
def test_public_addresses_and_names_pass_registration(url: str) -> None:
    assert registration_problem(url, allow_private=False) is None


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a00:5]",  # NAT64 of 10.0.0.5
        "[64:ff9b:1::a00:1]",  # local-use NAT64
        "[::7f00:1]",  # IPv4-compatible 127.0.0.1
        "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
        "[::ffff:0:7f00:1]",  # SIIT 127.0.0.1
        "[fe80::1]",
        "[fc00::1]",
    ],
)
def test_ipv6_addresses_carrying_a_private_ipv4_address_are_refused(host: str) -> None:
    problem = registration_problem(f"http://{host}/hooks", allow_private=False)
    assert problem is not None and "private" in problem


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://example.com:99999/h", "no valid port"),
        ("http://example.com:abc/h", "no valid port"),
        ("http://example.com/a b", "spaces or control characters"),
        ("http://example.com/\x01", "spaces or control characters"),
        ("http://" + "ü" * 70 + ".example/h", "not a valid host name"),  # label over 63
        # What the probe registered and the server retried for two hours:
        ("http://example.com:0/h", "no valid port"),
        ("http://xn--/h", "not a valid host name"),
        ("http://xn--zz/h", "not a valid host name"),  # punycode that decodes to nothing
        ("http://a..b/h", "not a valid host name"),
        ("http://" + "a" * 300 + ".example/h", "not a valid host name"),
        ("http://-a.example/h", "not a valid host name"),
        ("http://[fe80::1%eth0]/h", "zone"),
        ("http://[::1", "not a URL this server can call"),
        ("http://[::g]/h", "not a URL this server can call"),
        ("ftp://example.com/h", "http:// or https://"),
        ("http:///h", "http:// or https://"),
        ("http://example.com/" + "a" * 2000, "longer than 2000"),
    ],
)
def test_urls_the_server_could_not_call_are_refused_when_registered(url: str, said: str) -> None:
    problem = registration_problem(url, allow_private=True)
    assert problem is not None and said in problem


def test_an_international_name_goes_out_in_its_idna_form() -> None:
    assert registration_problem("https://bücher.example/h", allow_private=False) is None
    with pytest.raises(RefusedDestination, match=r"cannot resolve xn--bcher-kva\.example"):
        pinned("https://bücher.example/h", allow_private=False)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1./h", "http://localhost./h", "http://0x7f.1./h", "http://[::1]./h"]
)
def test_a_trailing_dot_hides_no_loopback_address(url: str) -> None:
    problem = registration_problem(url, allow_private=False)
    assert problem is not None, url


def test_private_addresses_pass_when_the_admin_allows_them() -> None:
    assert registration_problem("http://127.0.0.1:9/h", allow_private=True) is None


def test_a_loopback_destination_is_refused_at_delivery() -> None:
    with pytest.raises(RefusedDestination, match="resolves to a loopback"):
        pinned("http://localhost:9/hooks", allow_private=False)


def test_a_name_that_does_not_resolve_is_refused_with_the_reason() -> None:
    with pytest.raises(RefusedDestination, match=r"cannot resolve no-such-host\.invalid"):
        pinned("http://no-such-host.invalid/hooks", allow_private=False)


def test_the_request_goes_to_the_checked_address_under_the_registered_name() -> None:
    target = pinned("http://user:pw@localhost:8080/hooks?x=1", allow_private=True)
    assert target.url in (
        "http://user:pw@127.0.0.1:8080/hooks?x=1",
        "http://user:pw@[::1]:8080/hooks?x=1",
    )
    assert (target.host_header, target.sni_hostname) == ("localhost:8080", None)
    literal = pinned("https://[::1]/hooks", allow_private=True)
    assert (literal.url, literal.host_header) == ("https://[::1]:443/hooks", "[::1]")
    # A numeric host has no name to verify a certificate against beyond itself.
    assert literal.sni_hostname is None
