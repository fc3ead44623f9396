"""The access policy on its own: addresses, keys, the refusal log's rate limit. No sockets."""

from __future__ import annotations

import logging
import re

import pytest
import zmq
import zmq.utils.z85

from common.keys import create_key_pair, load_public_key
from server.auth import AccessPolicy, RateLimitedLog, parse_networks


def _raw(public_z85: bytes) -> bytes:
    return zmq.utils.z85.decode(public_z85)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_protected_mode_lets_loopback_in(address):
    assert AccessPolicy.build([], False, curve=False, keys_dir=None).decide(address, "NULL", []) == (True, "OK")


@pytest.mark.parametrize("address", ["10.78.0.2", "::ffff:192.0.2.1", "2001:db8::1", "", "not-an-ip"])
def test_protected_mode_refuses_everyone_else(address):
    policy = AccessPolicy.build([], False, curve=False, keys_dir=None)
    assert policy.decide(address, "NULL", []) == (
        False, "address not allowed (protected mode: start the server with --allow or keys to let it in)")
    assert policy.refused == 1


def test_allow_adds_networks_and_single_addresses():
    policy = AccessPolicy.build(["10.78.0.0/24", "192.0.2.7,2001:db8::/32"], False, curve=False, keys_dir=None)
    for address in ("10.78.0.200", "192.0.2.7", "::ffff:10.78.0.9", "2001:db8::5", "127.0.0.1"):
        assert policy.decide(address, "NULL", [])[0], address
    for address in ("10.78.1.1", "192.0.2.8", "2001:db9::1"):
        assert not policy.decide(address, "NULL", [])[0], address
    assert "10.78.0.0/24" in policy.describe()


def test_insecure_allow_all_and_curve_accept_any_address():
    assert AccessPolicy.build([], True, curve=False, keys_dir=None).decide("203.0.113.9", "NULL", [])[0]
    assert AccessPolicy.build([], False, curve=True, keys_dir=None).decide("203.0.113.9", "CURVE", [b"k" * 32])[0]


def test_bad_networks_are_refused_with_the_value():
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_networks(["10.0.0.0/33"])


def test_only_listed_keys_get_in(tmp_path):
    alice_public, _ = create_key_pair(tmp_path / "authorized", "alice")
    mallory_public, _ = create_key_pair(tmp_path / "other", "mallory")
    policy = AccessPolicy.build([], False, curve=True, keys_dir=tmp_path / "authorized")
    assert policy.decide("203.0.113.9", "CURVE", [_raw(load_public_key(alice_public))]) == (True, "OK")
    assert policy.decide("203.0.113.9", "CURVE", [_raw(load_public_key(mallory_public))]) == \
        (False, "client key not authorized")
    assert policy.decide("203.0.113.9", "NULL", []) == (False, "no client key")
    assert policy.decide("203.0.113.9", "CURVE", [b"short"]) == (False, "no client key")
    assert policy.stats() == {"curve": True, "curve_keys": 1, "accepted_connections": 1, "refused_connections": 3}


def test_allow_with_keys_requires_both(tmp_path):
    alice_public, _ = create_key_pair(tmp_path, "alice")
    policy = AccessPolicy.build(["10.78.0.0/24"], False, curve=True, keys_dir=tmp_path)
    key = [_raw(load_public_key(alice_public))]
    assert policy.decide("10.78.0.2", "CURVE", key)[0]
    assert policy.decide("10.79.0.2", "CURVE", key) == (False, "address not allowed")


def test_refusals_are_logged_at_most_burst_per_window_then_summarised(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.refusals"), burst=3, window_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for i in range(1000):
            limited.warning("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        now[0] = 10.5
        limited.warning("refused again")
    assert [r.getMessage() for r in caplog.records][3:] == ["997 more refusals were not logged", "refused again"]


def test_curve_keypair_roundtrip_matches_zmq(tmp_path):
    public_path, secret_path = create_key_pair(tmp_path, "x")
    from common.keys import load_key_pair
    public, secret = load_key_pair(secret_path)
    assert zmq.curve_public(secret) == public == load_public_key(public_path)
    assert load_public_key(public.decode()) == public  # the key text itself is accepted too


def test_a_key_file_rewritten_in_place_is_reloaded(tmp_path, monkeypatch):
    import server.auth

    monkeypatch.setattr(server.auth, "KEYS_RECHECK_S", 0.0)
    first_public, _ = create_key_pair(tmp_path / "authorized", "alice")
    second_public, _ = create_key_pair(tmp_path / "spare", "alice")
    policy = AccessPolicy.build([], False, curve=True, keys_dir=tmp_path / "authorized")
    first, second = [_raw(load_public_key(first_public))], [_raw(load_public_key(second_public))]
    assert policy.decide("192.0.2.1", "CURVE", first)[0]
    assert not policy.decide("192.0.2.1", "CURVE", second)[0]
    first_public.write_text(second_public.read_text() + "\n")  # same name, new key, same directory
    assert policy.decide("192.0.2.1", "CURVE", second)[0]
    assert not policy.decide("192.0.2.1", "CURVE", first)[0]  # the old key is gone


def test_allow_and_keys_come_from_the_environment_too(monkeypatch):
    from server.config import parse_config

    monkeypatch.setenv("MEMLOOKUP_ALLOW", "10.0.0.0/8, 192.168.0.0/16")
    monkeypatch.setenv("MEMLOOKUP_MAX_MEMORY", "100mb")
    monkeypatch.setenv("MEMLOOKUP_EVICTION", "allkeys-lru")
    config = parse_config([])
    assert parse_networks(config.allow) == parse_networks(["10.0.0.0/8", "192.168.0.0/16"])
    assert (config.max_memory_bytes, config.eviction) == (100 * 1024 * 1024, "allkeys-lru")
    assert parse_config(["--allow", "172.16.0.0/12"]).allow == ["172.16.0.0/12"]  # a flag beats the variable
    monkeypatch.setenv("MEMLOOKUP_INSECURE_ALLOW_ALL", "1")
    assert parse_config([]).insecure_allow_all
