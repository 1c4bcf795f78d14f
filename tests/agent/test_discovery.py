"""mDNS TXT records (aeamc.shared.discovery): built, parsed and checked without a network."""

from __future__ import annotations

import pytest

from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    AgentAdvert,
    CoordinatorAdvert,
    instance_label,
    instance_name,
    kinds_that_fit,
    parse_agent_txt,
    parse_coordinator_txt,
)
from aeamc.shared.errors import ValidationError
from aeamc.shared.identity import SigningKey

KEY = SigningKey.from_seed(b"\x07" * 32)
OTHER = SigningKey.from_seed(b"\x08" * 32)


def agent_advert(**kw) -> AgentAdvert:
    base = {
        "device_id": KEY.device_id,
        "public_key": KEY.public_key.hex(),
        "version": "0.1.0",
        "kinds": ("sha256-chain", "classify-int8"),
        "cpus": 4,
        "mem_mb": 3900,
        "battery": True,
    }
    return AgentAdvert(**(base | kw))


def coord_advert(**kw) -> CoordinatorAdvert:
    base = {
        "coordinator_id": KEY.device_id,
        "public_key": KEY.public_key.hex(),
        "version": "0.1.0",
        "cluster_id": 42,
    }
    return CoordinatorAdvert(**(base | kw))


def test_agent_txt_round_trip() -> None:
    advert = agent_advert()
    txt = advert.txt()
    assert txt == {
        "id": KEY.device_id,
        "pk": KEY.public_key.hex(),
        "proto": "1",
        "v": "0.1.0",
        "kinds": "sha256-chain,classify-int8",
        "cpus": "4",
        "mem_mb": "3900",
        "bat": "1",
    }
    name = instance_name(KEY.device_id, AGENT_SERVICE_TYPE)
    assert name == f"{KEY.device_id}._aeamc-agent._tcp.local."
    # zeroconf hands TXT over as bytes.
    raw = {k.encode(): v.encode() for k, v in txt.items()}
    assert parse_agent_txt(raw, name=name) == advert
    assert parse_agent_txt(agent_advert(kinds=(), battery=False).txt()).kinds == ()


def test_coordinator_txt_round_trip() -> None:
    advert = coord_advert(ca_fingerprint="ab" * 32)
    txt = advert.txt()
    assert txt["cluster"] == "42" and txt["ca"] == "ab" * 32
    assert "ca" not in coord_advert().txt()
    name = instance_name(KEY.device_id, COORDINATOR_SERVICE_TYPE)
    assert parse_coordinator_txt(txt, name=name) == advert


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pk": OTHER.public_key.hex()}, "pk"),  # key does not hash to id
        ({"pk": "zz"}, "pk"),
        ({"id": "ABC"}, "id"),
        ({"proto": "2"}, "proto"),
        ({"proto": "01"}, "proto"),
        ({"cpus": "0"}, "cpus"),
        ({"cpus": "-1"}, "cpus"),
        ({"mem_mb": "lots"}, "mem_mb"),
        ({"bat": "yes"}, "bat"),
        ({"kinds": "sha256-chain,Bad Kind"}, "kinds"),
        ({"v": "1 0"}, "v"),
        ({"v": None}, "v"),  # a boolean attribute is not a value
    ],
)
def test_agent_txt_refused(change: dict, field: str) -> None:
    txt = agent_advert().txt() | change
    with pytest.raises(ValidationError) as err:
        parse_agent_txt(txt)
    assert err.value.field == field


def test_missing_and_non_utf8_values() -> None:
    txt = agent_advert().txt()
    del txt["kinds"]
    with pytest.raises(ValidationError) as err:
        parse_agent_txt(txt)
    assert err.value.code == "missing_field"
    with pytest.raises(ValidationError, match="UTF-8"):
        parse_agent_txt(agent_advert().txt() | {"v": b"\xff"})


def test_instance_name_must_be_the_id() -> None:
    txt = agent_advert().txt()
    with pytest.raises(ValidationError, match="instance name"):
        parse_agent_txt(txt, name=instance_name(OTHER.device_id, AGENT_SERVICE_TYPE))
    with pytest.raises(ValidationError, match="not an instance"):
        parse_agent_txt(txt, name=instance_name(KEY.device_id, COORDINATOR_SERVICE_TYPE))
    assert instance_label(f"x.{AGENT_SERVICE_TYPE}", AGENT_SERVICE_TYPE) == "x"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cluster": "4294967296"}, "cluster"),
        ({"cluster": "x"}, "cluster"),
        ({"ca": "AB" * 32}, "ca"),
        ({"id": OTHER.device_id}, "pk"),
    ],
)
def test_coordinator_txt_refused(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_coordinator_txt(coord_advert().txt() | change)
    assert err.value.field == field


def test_oversized_entries_are_refused_and_kinds_trimmed() -> None:
    many = tuple(f"kind-{i:02d}-{'x' * 20}" for i in range(20))
    with pytest.raises(ValidationError, match="255"):
        agent_advert(kinds=many).txt()
    fitting = kinds_that_fit(many)
    assert 0 < len(fitting) < len(many)
    assert len(("kinds=" + ",".join(fitting)).encode()) <= 255
    assert agent_advert(kinds=tuple(fitting)).txt()
    with pytest.raises(ValidationError):
        agent_advert(version="v" * 65).txt()
