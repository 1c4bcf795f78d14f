"""The seccomp half of the units' sandbox, applied to a test process as systemd would.

``SystemCallFilter=`` and ``MemoryDenyWriteExecute=`` are seccomp filters that systemd
loads just before it executes the service; without systemd as PID 1 here, ``preexec(...)``
loads the same filters (via libseccomp, as systemd 252 does) in the child before exec:

- the system call allow-list, with the groups expanded by ``systemd-analyze
  syscall-filter``; anything else kills the process (stricter than the units'
  ``SystemCallErrorNumber=EPERM``, so a forbidden call cannot go unnoticed);
- MemoryDenyWriteExecute: ``mmap`` with PROT_WRITE|PROT_EXEC, ``mprotect`` and
  ``pkey_mprotect`` with PROT_EXEC, ``shmat`` with SHM_EXEC fail with EPERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@functools.cache
def libseccomp() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def unit_setting(unit: Path, key: str) -> list[str]:
    """Every value of ``key=`` in a unit file, in order."""
    values = []
    for line in unit.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


@functools.cache
def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if re.match(r"^@[\w-]+$", line):
            current = groups.setdefault(line, [])
        elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names: Iterable[str]) -> set[str]:
    """System call names, with ``@group`` references expanded recursively."""
    groups = _syscall_groups()
    result: set[str] = set()
    for name in names:
        result |= expand(groups[name]) if name.startswith("@") else {name}
    return result


def allowed_syscalls(unit: Path) -> set[str]:
    """The allow-list a unit's ``SystemCallFilter=`` lines add up to."""
    allowed: set[str] = set()
    for value in unit_setting(unit, "SystemCallFilter"):
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return allowed


def available() -> str | None:
    """Why the filters cannot be applied here, or None when they can."""
    if libseccomp() is None:
        return "libseccomp is not installed"
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed"
    return None


def preexec(unit: Path, user: tuple[int, int] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that becomes ``user`` (uid, gid) as ``User=`` does, then loads
    the unit's syscall filter and MDWE rules.

    Running as root would take code paths a service never takes (SQLite, for one,
    fchown()s its journal files when euid is 0), so tests run as root pass a user.
    """
    allowed = sorted(allowed_syscalls(unit))
    mdwe = unit_setting(unit, "MemoryDenyWriteExecute") == ["yes"]

    def load() -> None:
        lib = libseccomp()
        assert lib is not None
        if user is not None:
            os.setgroups([])
            os.setresgid(user[1], user[1], user[1])
            os.setresuid(user[0], user[0], user[0])
        if mdwe:
            ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
            deny = scmp_act_errno(errno.EPERM)
            for name, flags in (
                ("mmap", PROT_EXEC | PROT_WRITE),
                ("mprotect", PROT_EXEC),
                ("pkey_mprotect", PROT_EXEC),
                ("shmat", SHM_EXEC),
            ):
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                _add(lib, ctx, deny, nr, _ArgCmp(2, SCMP_CMP_MASKED_EQ, flags, flags))
            _load(lib, ctx)
        # Last: seccomp(2) itself need not be on the allow-list.
        if allowed:
            ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
            for name in allowed:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr >= 0:  # names of other architectures do not resolve here
                    _add(lib, ctx, SCMP_ACT_ALLOW, nr, None)
            _load(lib, ctx)

    return load


def _add(lib: ctypes.CDLL, ctx: int, action: int, nr: int, cmp: _ArgCmp | None) -> None:
    count, arg = (0, None) if cmp is None else (1, ctypes.byref(cmp))
    rc = lib.seccomp_rule_add_array(ctx, action, nr, count, arg)
    if rc != 0:
        raise OSError(-rc, f"seccomp_rule_add_array({nr})")


def _load(lib: ctypes.CDLL, ctx: int) -> None:
    rc = lib.seccomp_load(ctx)
    lib.seccomp_release(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load")
