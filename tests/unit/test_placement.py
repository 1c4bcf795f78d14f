"""Placement (SPEC §4.1), pure: which device a task's needs fit, in what order the
unmet need is named, and how the owner's settings travel (capabilities and mDNS TXT)."""

from __future__ import annotations

import pytest

from aeamc.shared.discovery import AgentAdvert, parse_agent_txt
from aeamc.shared.errors import ValidationError
from aeamc.shared.identity import SigningKey
from aeamc.shared.labels import MAX_CLIENTS, MAX_TAGS
from aeamc.shared.messages import Capabilities, WasmLimits, parse
from aeamc.shared.placement import REQUIRES, Needs, device_tags, misfit

KEY = SigningKey.from_seed(b"\x09" * 32)
LIMITS = WasmLimits(max_memory_mb=64, max_fuel=10**9, max_module_bytes=1 << 20)


def caps(**kw: object) -> Capabilities:
    base: dict[str, object] = {
        "kinds": ("sha256-chain", "wasm"),
        "cpus": 4,
        "mem_mb": 4096,
        "battery": False,
        "version": "1.0",
        "endpoint": None,
    }
    return Capabilities(**(base | kw))  # type: ignore[arg-type]


def wasm(memory_mb: int = 16, fuel: int = 1000, module_bytes: int = 1000, **kw: object) -> Needs:
    params = {"module": "ab" * 32, "input": "cd" * 32, "memory_mb": memory_mb, "fuel": fuel}
    return Needs.of_task("wasm", params, kw or None, client="0a0b0c0d", module_bytes=module_bytes)


def test_a_device_with_everything_fits() -> None:
    device = caps(tags=("lab",), wasm=LIMITS, clients=("0a0b0c0d",))
    assert misfit(device, (), wasm(tags=["lab"], min_cpus=4, min_mem_mb=4096)) is None


@pytest.mark.parametrize(
    ("device", "operator", "needs", "reason"),
    [
        (caps(kinds=("sha256-chain",)), (), wasm(), "does not run wasm"),
        (caps(clients=("ffffffff",)), (), wasm(), "does not accept this client's work"),
        # A task from before clients had ids fits no device that names its clients.
        (caps(clients=("0a0b0c0d",)), (), Needs("sha256-chain"), "does not accept"),
        (caps(tags=("lab",)), (), wasm(tags=["lab", "gpu"]), "lacks the tag gpu"),
        (caps(), (), wasm(tags=["gpu", "arm"]), "lacks the tags arm, gpu"),
        (caps(), (), wasm(min_cpus=8), "has 4 CPUs, the task needs 8"),
        (caps(), (), wasm(min_mem_mb=8192), "has 4096 MiB of memory, the task needs 8192"),
        (caps(wasm=LIMITS), (), wasm(memory_mb=65), "allows 64 MiB per chunk, the task asks 65"),
        (caps(wasm=LIMITS), (), wasm(fuel=10**9 + 1), "allows 1000000000 fuel per chunk"),
        (caps(wasm=LIMITS), (), wasm(module_bytes=(1 << 20) + 1), "allows modules of 1048576"),
        # The first unmet need is named: kind before client before tags before limits.
        (
            caps(kinds=("x",), clients=("ffffffff",), wasm=LIMITS),
            (),
            wasm(memory_mb=999, tags=["gpu"]),
            "does not run wasm",
        ),
        (caps(clients=("ffffffff",)), (), wasm(tags=["gpu"]), "does not accept"),
        (caps(wasm=LIMITS), (), wasm(memory_mb=999, tags=["gpu"]), "lacks the tag gpu"),
    ],
)
def test_the_first_unmet_need_is_named(
    device: Capabilities, operator: tuple[str, ...], needs: Needs, reason: str
) -> None:
    got = misfit(device, operator, needs)
    assert got is not None and got.startswith(reason)


def test_the_operators_tags_count_with_the_devices_own() -> None:
    device = caps(tags=("lab",))
    needs = wasm(tags=["lab", "rack-2"])
    assert misfit(device, (), needs) is not None
    assert misfit(device, ("rack-2",), needs) is None
    assert device_tags(device, ("rack-2",)) == {"lab", "rack-2"}


def test_limits_bind_only_wasm_tasks_and_only_where_advertised() -> None:
    small = caps(wasm=WasmLimits(max_memory_mb=1, max_fuel=1, max_module_bytes=1))
    assert misfit(small, (), Needs("sha256-chain")) is None
    # An agent older than advertised limits fits here and checks its own when offered.
    assert misfit(caps(), (), wasm(memory_mb=4096, fuel=10**12)) is None


@pytest.mark.parametrize(
    "requires",
    [
        {"tags": ["GPU"]},
        {"tags": ["-lab"]},
        {"tags": ["x" * 25]},
        {"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]},
        {"min_cpus": 0},
        {"min_mem_mb": -1},
        {"gpu": True},
        {"tags": "lab"},
    ],
)
def test_requires_is_checked_strictly(requires: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        REQUIRES(requires, "requires")


def test_capabilities_without_the_owners_settings_keep_their_bytes() -> None:
    plain = caps()
    assert set(plain.to_dict()) == {"kinds", "cpus", "mem_mb", "battery", "version", "endpoint"}
    full = caps(tags=("lab",), wasm=LIMITS, clients=("0a0b0c0d",))
    assert parse(Capabilities, full.to_dict()) == full
    for bad in (
        {"tags": ["Lab"]},
        {"clients": []},
        {"clients": ["0A0B0C0D"]},
        {"clients": ["0a0b0c0d0"]},
        {"wasm": {"max_memory_mb": 0, "max_fuel": 1, "max_module_bytes": 1}},
        {"wasm": {"max_memory_mb": 1, "max_fuel": 1}},
    ):
        with pytest.raises(ValidationError):
            parse(Capabilities, plain.to_dict() | bad)


def advert(**kw: object) -> AgentAdvert:
    base: dict[str, object] = {
        "device_id": KEY.device_id,
        "public_key": KEY.public_key.hex(),
        "version": "1.0",
        "kinds": ("wasm",),
        "cpus": 2,
        "mem_mb": 1024,
        "battery": False,
    }
    return AgentAdvert(**(base | kw))  # type: ignore[arg-type]


def test_the_owners_settings_travel_in_the_txt_record_and_the_largest_fit() -> None:
    tags = tuple(f"{i}" + "t" * 23 for i in range(MAX_TAGS))  # 24 characters each
    clients = tuple(f"{i:08x}" for i in range(MAX_CLIENTS))
    big = WasmLimits(max_memory_mb=4096, max_fuel=10**12, max_module_bytes=4 << 20)
    a = advert(tags=tags, wasm=big, clients=clients)
    txt = a.txt()
    assert len(f"tags={txt['tags']}".encode()) <= 255
    assert txt["wasm"] == f"4096,{10**12},{4 << 20}"
    assert parse_agent_txt(txt) == a
    assert parse_agent_txt(advert().txt()) == advert()  # none set: none sent


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tags", "lab,,x"),
        ("tags", "LAB"),
        ("clients", "xyz"),
        ("wasm", "1,2"),
        ("wasm", "0,1,1"),
        ("wasm", "1,-1,1"),
        ("wasm", "a,b,c"),
    ],
)
def test_a_malformed_txt_setting_is_refused(key: str, value: str) -> None:
    txt = advert().txt() | {key: value}
    with pytest.raises(ValidationError):
        parse_agent_txt(txt)
