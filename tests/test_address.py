"""Node addresses as a user types them."""

import pytest

from common.address import DEFAULT_PORT, node_endpoints, resolve_endpoint, split_node


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1", ("127.0.0.1", DEFAULT_PORT)),
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("tcp://10.0.0.5:9000", ("10.0.0.5", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("localhost", ("localhost", DEFAULT_PORT)),
        (" db.example:1 ", ("db.example", 1)),
    ],
)
def test_accepted_forms(text: str, expected: tuple[str, int]) -> None:
    assert split_node(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "tcp://", ":9000", "host:", "host:0", "host:65536", "host:http", "[::1", "[::1]x", "[nothex]:1",
        "fe80::1:99999",
    ],
)
def test_rejected_forms_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        split_node(text)


def test_ipv6_endpoint_is_bracketed() -> None:
    assert node_endpoints("[::1]:7") == ["tcp://[::1]:7"]


def test_hostnames_resolve() -> None:
    assert "tcp://127.0.0.1:7400" in node_endpoints("localhost")


def test_unresolvable_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot resolve"):
        node_endpoints("no-such-host.invalid")


def test_an_endpoint_is_resolved_when_asked_and_an_address_is_kept() -> None:
    assert resolve_endpoint("tcp://localhost:7") == "tcp://127.0.0.1:7"
    assert resolve_endpoint("tcp://[::1]:7") == "tcp://[::1]:7"
    assert resolve_endpoint("tcp://10.0.0.9:7") == "tcp://10.0.0.9:7"
    with pytest.raises(ValueError, match="cannot resolve"):
        resolve_endpoint("tcp://no-such-host.invalid:7")
