"""Each coordinator table has one owner module, the only one that writes it, and the live
device registry changes only inside the store layer (coordinator/store/).

The coordinator's source is parsed with `ast` (nothing is imported). Writes are found in
string literals (f-strings with their placeholders blanked): ``INSERT [OR ...] INTO t``,
``REPLACE INTO t``, ``UPDATE t`` and ``DELETE FROM t``; and in sqlite-utils calls:
``.insert/.insert_all/.upsert/.upsert_all/.update/.delete/.delete_where`` on
``db.table("t")`` or ``db["t"]``. Docstrings are prose, not SQL, and are skipped;
``schema.py`` and ``pgschema.py`` (the migrations) and ``lifecycle_triggers.py`` (the
triggers' DDL) are excepted. Registry mutations are item assignment or deletion on ``….devices[…]``,
replacing another object's ``devices``, the dict mutators on ``….devices``, appending to
``poa_times``, ``object.__setattr__``, building a ``Device`` outside the store and, in a
module that reaches the registry (names ``….devices`` or ``Device``), assigning a field
of ``Device`` (``d.state = …``). ``Device`` is frozen besides, so an assignment the scan
cannot see still fails where it runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = ROOT / "coordinator" / "src" / "aeamc" / "coordinator"

#: Every table and the modules (relative to the coordinator package) that may write it.
OWNERS: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        ("devices", "heartbeats", "erased_devices", "candidates"),
        frozenset({"store/devices.py"}),
    ),
    **dict.fromkeys(("tasks", "assignments"), frozenset({"store/tasks.py"})),
    **dict.fromkeys(("proofs", "spot_checks"), frozenset({"store/proofs.py"})),
    # The anchoring columns of a block are anchoring's.
    "blocks": frozenset({"store/blocks.py", "anchoring/store.py"}),
    "tokens": frozenset({"store/tokens.py"}),
    "blobs": frozenset({"store/blobs.py"}),
    "blob_owners": frozenset({"store/blobs.py"}),
    **dict.fromkeys(("flags", "flag_history"), frozenset({"store/flags.py"})),
    **dict.fromkeys(("certificates", "revoked_certificates"), frozenset({"store/certificates.py"})),
    **dict.fromkeys(
        ("anchors", "anchor_txs", "anchor_leaves", "meta"), frozenset({"anchoring/store.py"})
    ),
    "releases": frozenset({"updates/rollouts.py"}),
    "update_reports": frozenset({"updates/reports.py"}),
    "leaders": frozenset({"store/leaders.py"}),
}

EXCEPTED = frozenset({"schema.py", "pgschema.py", "lifecycle_triggers.py"})

_SQL_WRITE = re.compile(
    r"\b(?:INSERT(?:\s+OR\s+[A-Z]+)?\s+INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+"
    r"[\"`]?([A-Za-z_][A-Za-z0-9_]*)"
)
_UTILS_WRITES = frozenset(
    {"insert", "insert_all", "upsert", "upsert_all", "update", "delete", "delete_where"}
)
_DICT_MUTATORS = frozenset({"pop", "popitem", "clear", "update", "setdefault"})
_DEQUE_MUTATORS = frozenset({"append", "appendleft", "extend", "extendleft", "clear", "pop"})
#: The fields of ``registry.Device`` (read from its source, so a new field is covered).
_DEVICE_FIELDS = frozenset(
    node.target.id
    for cls in ast.parse((COORDINATOR / "registry.py").read_text()).body
    if isinstance(cls, ast.ClassDef) and cls.name == "Device"
    for node in cls.body
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
)


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(COORDINATOR.rglob("*.py")):
        rel = path.relative_to(COORDINATOR).as_posix()
        if rel not in EXCEPTED:
            yield rel, ast.parse(path.read_text(), str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the string constants that are docstrings (prose, not SQL)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def _strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal but docstrings; f-string holes become ``{}``."""
    skip = _docstrings(tree)
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for part in node.values:
                inner.add(id(part))
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    parts.append(part.value)
                else:
                    parts.append("{}")
            yield node.lineno, "".join(parts)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inner
        ):
            yield node.lineno, node.value


def _table_arg(node: ast.expr) -> str | None:
    """The table named by ``db.table("t")`` or ``db["t"]``, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "table"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def table_writes(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, table) of every write of a known table in ``tree``."""
    for line, text in _strings(tree):
        for match in _SQL_WRITE.finditer(text):
            if match.group(1) in OWNERS:
                yield line, match.group(1)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _UTILS_WRITES
        ):
            table = _table_arg(node.func.value)
            if table in OWNERS:
                yield node.lineno, table


def _is_devices(node: ast.expr) -> bool:
    """Whether ``node`` is ``….devices`` (the registry, or something passing for it)."""
    return isinstance(node, ast.Attribute) and node.attr == "devices"


def _reaches_registry(tree: ast.Module) -> bool:
    """Whether ``tree`` names the registry (``….devices``) or ``Device`` anywhere."""
    return any(
        _is_devices(node) or (isinstance(node, ast.Name) and node.id == "Device")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute | ast.Name)
    )


def registry_mutations(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, what) of every change of the live registry or of a ``Device`` in ``tree``."""
    devices_here = _reaches_registry(tree)
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        flat: list[ast.expr] = []
        for t in targets:
            flat += list(t.elts) if isinstance(t, ast.Tuple | ast.List) else [t]
        for t in flat:
            if isinstance(t, ast.Subscript) and _is_devices(t.value):
                yield t.lineno, "item of the device registry set or deleted"
            elif (
                _is_devices(t)
                and isinstance(t, ast.Attribute)
                and not (isinstance(t.value, ast.Name) and t.value.id == "self")
            ):
                yield t.lineno, "the device registry replaced"
            elif (
                devices_here
                and isinstance(t, ast.Attribute)
                and t.attr in _DEVICE_FIELDS
                and (
                    (isinstance(t.value, ast.Name) and t.value.id != "self")
                    or isinstance(t.value, ast.Subscript)
                )
            ):
                yield t.lineno, f"Device.{t.attr} assigned"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, method = node.func.value, node.func.attr
            if _is_devices(owner) and method in _DICT_MUTATORS:
                yield node.lineno, f"devices.{method}()"
            elif (
                isinstance(owner, ast.Attribute)
                and owner.attr == "poa_times"
                and method in _DEQUE_MUTATORS
            ):
                yield node.lineno, f"poa_times.{method}()"
            elif isinstance(owner, ast.Name) and owner.id == "object" and method == "__setattr__":
                yield node.lineno, "object.__setattr__()"
            elif isinstance(owner, ast.Name) and owner.id == "Device" and method == "from_row":
                yield node.lineno, "Device built"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "Device"
        ):
            yield node.lineno, "Device built"


def test_every_table_is_written_only_by_its_owner() -> None:
    strays = [
        f"{rel}:{line} writes {table} (owner: {', '.join(sorted(OWNERS[table]))})"
        for rel, tree in _sources()
        for line, table in table_writes(tree)
        if rel not in OWNERS[table]
    ]
    assert not strays, "table written outside its owner module:\n" + "\n".join(strays)


def test_the_scan_sees_the_owners_writes() -> None:
    """A scan that found nothing would pass the test above for nothing."""
    found = {(rel, table) for rel, tree in _sources() for _, table in table_writes(tree)}
    unwritten = {table for table in OWNERS if not any(t == table for _, t in found)}
    assert not unwritten, f"no write found of {sorted(unwritten)}: is the scan blind?"


def test_only_the_store_changes_the_device_registry() -> None:
    assert {"state", "last_seq", "poa_times", "record"} <= _DEVICE_FIELDS
    strays = [
        f"{rel}:{line}: {what}"
        for rel, tree in _sources()
        if not rel.startswith("store/") and rel != "registry.py"
        for line, what in registry_mutations(tree)
    ]
    assert not strays, "device registry changed outside the store:\n" + "\n".join(strays)


def test_the_scans_catch_a_stray_write() -> None:
    """The scans flag what they are meant to (a service that writes, or mutates)."""
    service = ast.parse(
        "def f(db, c, d, table):\n"
        '    db.execute("UPDATE devices SET state=? WHERE device_id=?", [1, 2])\n'
        '    db.execute(f"DELETE FROM heartbeats WHERE {table}")\n'
        '    db.table("tasks").insert({})\n'
        '    db["flags"].upsert({}, pk="name")\n'
        '    db.execute("INSERT OR IGNORE INTO spot_checks VALUES (1)")\n'
        '    db.execute("SELECT 1 FROM proofs")\n'
    )
    assert sorted(t for _, t in table_writes(service)) == [
        "devices",
        "flags",
        "heartbeats",
        "spot_checks",
        "tasks",
    ]
    mutating = ast.parse(
        "def f(c, d):\n"
        "    c.devices['x'] = d\n"
        "    del c.devices['x']\n"
        "    c.devices.pop('x')\n"
        "    d.state = 'stale'\n"
        "    d.last_seq, d.last_seen = 3, 4\n"
        "    c.devices['x'].record = None\n"
        "    d.poa_times.append(1)\n"
        "    c.devices = {}\n"
        "    self.state = 'fine'\n"
        "    self.devices = {}\n"
    )
    assert len(list(registry_mutations(mutating))) == 9
