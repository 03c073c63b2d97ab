"""Which peers are trusted proxies: the remembered answers (``client_ip.is_trusted``)
against a plain computation with ipaddress, on addresses valid and not."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera_verify.client_ip import Network, is_trusted

NETWORKS: list[Network] = [
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("192.168.4.0/24"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fd00::/8"),
]
ADDRESSES = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["127.0.0.1", "10.1.2.3", "192.168.4.9", "192.168.5.9", "::1", "fd00::7"]),
    st.text(max_size=40),  # not an address at all: never trusted
)


def _reference(address: str, proxies: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


@settings(max_examples=400, deadline=None)
@given(address=ADDRESSES, chosen=st.lists(st.sampled_from(NETWORKS), unique=True))
def test_is_trusted_answers_as_ipaddress_does(address: str, chosen: list[Network]) -> None:
    # Asked twice, and with the proxies as a list and as a tuple: the remembered answer
    # is the computed one, and one set of proxies never answers for another.
    expected = _reference(address, chosen)
    assert is_trusted(address, chosen) is expected
    assert is_trusted(address, tuple(chosen)) is expected
    assert is_trusted(address, ()) is False
