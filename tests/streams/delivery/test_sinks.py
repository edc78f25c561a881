"""The sink policy: https only and public addresses only in production (no SSRF)."""

from __future__ import annotations

import ipaddress

import pytest

from streams.config import DeliverySettings, Settings
from streams.delivery.sinks import LOOPBACK, SinkPolicy, SinkRefused

REFUSED = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "192.0.2.1",  # documentation
    "240.0.0.1",  # reserved
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_in_every_form(address: str) -> None:
    with pytest.raises(SinkRefused) as refused:
        SinkPolicy().check_address(address)
    assert refused.value.code == "sink_not_allowed"
    assert address not in refused.value.reason  # the client learns the rule, not the address


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_global_addresses_are_allowed(address: str) -> None:
    SinkPolicy().check_address(address)  # a check of the string: nothing is connected to


def test_an_allowed_internal_network_is_allowed_and_only_it() -> None:
    policy = SinkPolicy(allowed=(ipaddress.ip_network("10.20.0.0/16"),))
    policy.check_address("10.20.3.4")
    with pytest.raises(SinkRefused):
        policy.check_address("10.21.0.1")
    with pytest.raises(SinkRefused):
        policy.check_address("127.0.0.1")


def test_urls_need_https_unless_http_is_allowed() -> None:
    with pytest.raises(SinkRefused, match="https"):
        SinkPolicy().check_url("http://zaken.example/hook")
    SinkPolicy().check_url("https://zaken.example/hook")  # a name: checked where connected
    SinkPolicy(allow_http=True).check_url("http://zaken.example/hook")
    with pytest.raises(SinkRefused):
        SinkPolicy().check_url("https://[::ffff:127.0.0.1]/hook")
    with pytest.raises(SinkRefused):
        SinkPolicy().check_url("ftp://zaken.example/hook")


def test_the_policy_follows_the_mode_unless_configured(settings: Settings) -> None:
    production = settings.model_copy(update={"mode": "production"})
    assert SinkPolicy.from_settings(production) == SinkPolicy(allow_http=False, allowed=())
    test = settings.model_copy(update={"mode": "test"})
    assert SinkPolicy.from_settings(test) == SinkPolicy(allow_http=True, allowed=LOOPBACK)
    delivery = DeliverySettings(allow_http=True, allowed_private_sinks=["10.0.0.0/8"])
    configured = production.model_copy(update={"delivery": delivery})
    assert SinkPolicy.from_settings(configured) == SinkPolicy(
        allow_http=True, allowed=(ipaddress.ip_network("10.0.0.0/8"),)
    )
