"""A change record names the xattrs that changed (issue 25, DESIGN §7): a file capability
as getcap says it, an ACL as getfacl's short form, so that a `setcap` reads the same in
NOOP and live."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import Run
from disco.engine.change_text import header
from disco.engine.changes import read_changes
from disco.engine.xattrs import acl, capability, value_text
from test_dance_steps import dance, make_server, record_of

ROOT = os.geteuid() == 0
NET_RAW = 13


def cap_value(permitted: int, effective: bool, version: int = 2, rootid: int = 0) -> bytes:
    magic = (version << 24) | int(effective)
    data = struct.pack("<IIIII", magic, permitted, 0, 0, 0)
    return data + (struct.pack("<I", rootid) if version == 3 else b"")


def test_a_file_capability_reads_as_getcap_says_it() -> None:
    assert capability(cap_value(1 << NET_RAW, True)) == "cap_net_raw=ep"
    assert capability(cap_value(1 << NET_RAW | 1 << 10, False)) == (
        "cap_net_bind_service,cap_net_raw=p"
    )
    assert capability(cap_value(1 << NET_RAW, True, version=3)) == "cap_net_raw=ep"
    assert capability(cap_value(1 << NET_RAW, True, 3, 100000)) == "cap_net_raw=ep rootid=100000"
    assert capability(b"junk") is None


def test_an_acl_reads_as_getfacl_short_form() -> None:
    entries = [(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]  # fmt: skip
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    assert acl(value) == "user::rw-,user:1000:r--,group::r--,mask::r--,other::---"
    assert acl(b"\x02\0\0\0\x07") is None
    assert value_text("user.note", b"hello\0") == "hello"
    assert value_text("user.blob", b"\x01\x02") == "0x0102"


def test_setcap_on_a_copied_up_file_names_the_capability(tmp_path: Path) -> None:
    if not ROOT or shutil.which("setcap") is None:
        pytest.skip("needs root and setcap")
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "usr/bin").mkdir(parents=True)
    (upper / "usr/bin").mkdir(parents=True)
    (lower / "usr/bin/ping").write_bytes(b"\x7fELF")
    shutil.copy2(lower / "usr/bin/ping", upper / "usr/bin/ping")
    (upper / "usr/bin/new").write_bytes(b"\x7fELF")
    for name in ("ping", "new"):
        subprocess.run(["setcap", "cap_net_raw+ep", str(upper / "usr/bin" / name)], check=True)
    changes = {c.path: header(c) for c in read_changes(upper, [lower])}
    assert changes["/usr/bin/ping"] == (
        "File: file: /usr/bin/ping : Modified : xattrs=[none => security.capability=cap_net_raw=ep]"
    )
    assert changes["/usr/bin/new"].endswith(" xattrs=[security.capability=cap_net_raw=ep]")


SETCAP = """#!/bin/bash
set -e
printf 'x' > /srv/tool
chmod 755 /srv/tool
setcap cap_net_raw+p /srv/tool
cp /etc/hostname /srv/copied
setcap cap_net_bind_service+ep /srv/copied
"""


def test_setcap_in_a_step_shows_the_same_record_in_noop_and_live(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    if shutil.which("setcap") is None:
        pytest.skip("needs setcap")
    (scratch_root / "etc/hostname").write_text("node\n")
    server = make_server(tmp_path / "srv", {"caps": {"scripts/10-caps": SETCAP}})
    os.chmod(server / "modules/caps/scripts/10-caps", 0o755)
    shown = dance(cmd, server, scratch_root)
    assert shown.returncode == 0, shown.stderr
    made = dance(cmd, server, scratch_root, noop=False)
    assert made.returncode == 0, made.stderr
    for path, cap in (("/srv/tool", "cap_net_raw=p"), ("/srv/copied", "cap_net_bind_service=ep")):
        noop_line, _ = record_of(shown, path)
        live_line, _ = record_of(made, path)
        assert f"xattrs=[security.capability={cap}]" in noop_line
        assert noop_line == live_line
    got = subprocess.run(["getcap", str(scratch_root / "srv/tool")], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "cap_net_raw=p" in got
