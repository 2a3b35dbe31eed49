"""Run a command under the system-call filter a systemd unit file asks for, without systemd.

Where no systemd runs as PID 1 (containers, CI), this is how a test learns whether the
daemon works under its unit's `SystemCallFilter=` and `MemoryDenyWriteExecute=`: the sets
are expanded with `systemd-analyze syscall-filter` and loaded with libseccomp, as systemd
252 does (a list of allowed calls, everything else EPERM; then, stacked, a filter refusing
memory that is or becomes both writable and executable).

    python3 -m tests.sandbox UNIT_FILE -- COMMAND...
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

_ACT_ALLOW = 0x7FFF0000
_EPERM = 1
_ACT_EPERM = 0x00050000 | _EPERM
_CMP_MASKED_EQ = 7
_PROT_WRITE, _PROT_EXEC = 0x2, 0x4
_SHM_EXEC = 0o100000


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a set such as @system-service, nested sets included."""
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item, seen)
    return calls


def unit_filter(unit: Path) -> tuple[set[str], bool]:
    """The allowed system calls, and whether MemoryDenyWriteExecute= is on."""
    allowed: set[str] = set()
    mdwe = False
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            deny = value.startswith("~")
            names: set[str] = set()
            for item in value.lstrip("~").split():
                names |= expand(item)
            allowed = allowed - names if deny else allowed | names
        elif line.startswith("MemoryDenyWriteExecute="):
            mdwe = line.split("=", 1)[1].strip() in ("yes", "true", "1", "on")
    return allowed, mdwe


def load(allowed: set[str], mdwe: bool) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    if mdwe:  # first: the allow list that follows leaves out seccomp() itself
        ctx = lib.seccomp_init(_ACT_ALLOW)
        rules = [
            ("mmap", 2, _PROT_WRITE | _PROT_EXEC),
            ("mprotect", 2, _PROT_EXEC),
            ("pkey_mprotect", 2, _PROT_EXEC),
            ("shmat", 2, _SHM_EXEC),
        ]
        for name, arg, mask in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            cmp = _ArgCmp(arg, _CMP_MASKED_EQ, mask, mask)
            lib.seccomp_rule_add_array(ctx, _ACT_EPERM, number, 1, ctypes.byref(cmp))
        if lib.seccomp_load(ctx) != 0:
            raise OSError(ctypes.get_errno(), "seccomp_load (write-execute)")
    ctx = lib.seccomp_init(_ACT_EPERM)
    for name in sorted(allowed):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:
            lib.seccomp_rule_add_array(ctx, _ACT_ALLOW, number, 0, None)
    if lib.seccomp_load(ctx) != 0:
        raise OSError(ctypes.get_errno(), "seccomp_load (allow list)")


def main(argv: list[str]) -> None:
    unit, sep, *command = argv
    assert sep == "--" and command, __doc__
    allowed, mdwe = unit_filter(Path(unit))
    load(allowed, mdwe)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
