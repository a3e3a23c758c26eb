"""Extended attributes as a change record names them (DESIGN §7): a file capability
as getcap(8) says it (security.capability: "cap_net_raw=ep"), an ACL as getfacl(1)'s
short form (system.posix_acl_*: "user::rwx,user:1000:r-x,..."), other values as text
when they are, else in hex. `setcap cap_net_raw+ep /bin/ping` then reads the same in
NOOP and live: xattrs=[security.capability=cap_net_raw=ep]."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from disco.quoting import quote

# linux/capability.h, in bit order.
CAPS = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap"
    " linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner"
    " sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice"
    " sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap"
    " mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf"
    " checkpoint_restore"
).split()
_ACL_TAGS = {1: "user:", 2: "user", 4: "group:", 8: "group", 0x10: "mask:", 0x20: "other:"}
_MAX_SHOWN = 64  # bytes of a binary value shown in hex


def capability(value: bytes) -> str | None:
    """A security.capability value as getcap says it, or None if it is not one."""
    if len(value) < 12:
        return None
    magic = struct.unpack_from("<I", value)[0]
    version, effective = magic & 0xFF000000, magic & 1
    words = {0x01000000: 1, 0x02000000: 2, 0x03000000: 2}.get(version)
    if words is None or len(value) < 4 + 8 * words:
        return None
    permitted = inheritable = 0
    for i in range(words):
        p, n = struct.unpack_from("<II", value, 4 + 8 * i)
        permitted |= p << (32 * i)
        inheritable |= n << (32 * i)
    groups: dict[str, list[str]] = {}
    for bit in range(64):
        if not (permitted | inheritable) >> bit & 1:
            continue
        flags = (
            ("e" if effective and permitted >> bit & 1 else "")
            + ("i" if inheritable >> bit & 1 else "")
            + ("p" if permitted >> bit & 1 else "")
        )
        name = f"cap_{CAPS[bit]}" if bit < len(CAPS) else str(bit)
        groups.setdefault(flags, []).append(name)
    text = " ".join(f"{','.join(names)}={flags}" for flags, names in groups.items()) or "="
    if version == 0x03000000 and len(value) >= 24:
        rootid = struct.unpack_from("<I", value, 20)[0]
        if rootid:  # a capability that holds only in a user namespace whose root is rootid
            text += f" rootid={rootid}"
    return text


def acl(value: bytes) -> str | None:
    """A system.posix_acl_* value in getfacl's short form, or None."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return None
    entries = []
    for offset in range(4, len(value), 8):
        tag, perm, id_ = struct.unpack_from("<HHI", value, offset)
        if tag not in _ACL_TAGS:
            return None
        rwx = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        head = _ACL_TAGS[tag]
        entries.append(f"{head}{'' if head.endswith(':') else ':' + str(id_)}:{rwx}")
    return ",".join(entries)


def value_text(name: str, value: bytes) -> str:
    """One xattr's value as a record says it."""
    shown = None
    if name == "security.capability":
        shown = capability(value)
    elif name.startswith("system.posix_acl_"):
        shown = acl(value)
    if shown is not None:
        return shown
    text = value.rstrip(b"\0")
    if text and all(32 <= b < 127 for b in text):
        return quote(text.decode())
    cut = "..." if len(value) > _MAX_SHOWN else ""
    return "0x" + value[:_MAX_SHOWN].hex() + cut


def xattrs_text(xattrs: Sequence[tuple[str, bytes]]) -> str:
    """Every xattr as NAME=VALUE, joined by "; " ("none" when there are none)."""
    return "; ".join(f"{name}={value_text(name, value)}" for name, value in xattrs) or "none"
