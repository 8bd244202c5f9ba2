"""Webhook destinations: numeric spellings, names, and the request pinned to its address."""

from __future__ import annotations

import pytest

from tunery.openai_api.destinations import RefusedDestination, pinned, registration_problem


@pytest.mark.parametrize(
    "url",
    ["http://8.8.8.8/h", "https://hooks.example.com/h", "http://[2001:4860:4860::8888]/h"],
)
def test_public_addresses_and_names_pass_registration(url: str) -> None:
    assert registration_problem(url, allow_private=False) is None


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
