"""NOOP tells the truth about real-world scripts nobody here wrote (DESIGN §7, §14).

The corpus is real maintainer scripts that use a command the rules table speaks of, each
the one script of a module of its own: those of this machine's installed packages
(postinst run as `configure`, prerm as `upgrade VERSION`), and the postinst of the
packages in apt's cache that are not installed, unpacked into the clones first as a fresh
install (they enable units, make rc.d links, add users). One dance runs them NOOP on a
clone of this machine's root, one live (`--effects run`) on a second clone made at the
same moment, in a pid and network namespace of their own so that nothing reaches this
machine's processes; their change records must be the same, module by module and path
by path, and so must each script's exit status.

A third clone, danced live too, tells which contents live itself cannot repeat (a log
line with the time, a fresh random key, a cache holding inode numbers): for those paths
the records are compared without their md5, everything else in full. Scripts that
compile a whole tree (py3compile, fc-cache, ...) are left out to keep the run short.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import BIN, refuse_live_dance_on_this_machine

INFO = Path("/var/lib/dpkg/info")
CACHE = Path("/var/cache/apt/archives")
NODE = "corpus.example.com"
USES = re.compile(
    r"compare-versions|deb-systemd-|update-rc\.d|invoke-rc\.d|systemctl|update-alternatives"
    r"|dpkg-maintscript-helper|ucf|adduser|useradd|groupadd|dpkg-statoverride|dpkg-divert"
    r"|ldconfig|pidof|pgrep|start-stop-daemon"
)
SLOW = re.compile(
    r"py3compile|pycompile|compileall|force-recompile|update-ca-certificates|fc-cache"
    r"|locale-gen|mandb"
)
# A fresh install of a package that provides a service or a user: the effects on files
# that a NOOP by name used to miss (rc.d links, .wants links, users).
FRESH_USES = re.compile(r"deb-systemd-helper|update-rc\.d|adduser|useradd")
FRESH_MAX_BYTES = 20_000_000  # unpacking a TeX distribution is not what this test is for
ARGS = {"postinst": "configure", "prerm": "upgrade"}
WRAPPER = """#!/bin/bash
# As dpkg runs a maintainer script.
export DPKG_MAINTSCRIPT_PACKAGE={package} DPKG_MAINTSCRIPT_NAME={kind}
export DPKG_MAINTSCRIPT_ARCH={arch} DPKG_RUNNING_VERSION={dpkg} DPKG_ROOT=
export DPKG_ADMINDIR=/var/lib/dpkg DEBIAN_FRONTEND=noninteractive
exec /var/disco/modules/{module}/scripts/.maint {action} {version}
"""
# Three identical clones of / in a private mount namespace (DESIGN §14): an overlay of /
# is no snapshot (a lower that changes shows through, and other tests add users to this
# machine's /etc while we run), so /etc, /var/lib and /var/log are copied first and shown
# opaque above /. Daemons are kept from starting as Debian does in chroots. Live steps
# bind /run from the dance's own mount namespace: a tmpfs there keeps their writes to /run
# off this machine.
DRIVER = """set -e
T=$1 SERVER=$2 DISCO=$3 OUT=$4 PYTHON=$5
mount -t tmpfs tmpfs "$T"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p "$T/snap/var"
cp -a /etc "$T/snap/"
cp -a /var/lib /var/log "$T/snap/var/"
"$PYTHON" -c 'import os, sys
for d in sys.argv[1:]: os.setxattr(d, "trusted.overlay.opaque", b"y")' \
  "$T/snap/etc" "$T/snap/var/lib" "$T/snap/var/log"
for d in bin sbin lib lib32 lib64 libx32; do  # merged /usr: tar keeps these symlinks
  if [ -L "/$d" ]; then mkdir -p "$T/snap/$(readlink "/$d")"; cp -a "/$d" "$T/snap/"; fi
done
for deb in "${@:6}"; do  # a fresh install: the package's files, not yet configured
  dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$T/snap"
done
for r in noop live again; do
  mkdir -p "$T/$r/up" "$T/$r/wk" "$T/$r/root"
  mount -t overlay overlay \
    -o "lowerdir=$T/snap:/,upperdir=$T/$r/up,workdir=$T/$r/wk" "$T/$r/root"
done
for r in noop live again; do
  printf '#!/bin/sh\\nexit 101\\n' > "$T/$r/root/usr/sbin/policy-rc.d"
  chmod 755 "$T/$r/root/usr/sbin/policy-rc.d"
done
dance() {
  DISCO_STATE=$T/$1/state NO_COLOR=1 NOOP= "$DISCO" dance $2 --server "$SERVER" \\
    --node corpus.example.com --root "$T/$1/root" > "$OUT/$1.out" 2>&1 || true
  cp "$T/$1/state/reports/last.json" "$OUT/$1.json"
}
# Side by side on two cores; live later, so that what has the time in it differs.
dance noop --noop & dance again "--effects run" & wait
dance live "--effects run"
"""


def query(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def corpus() -> list[Path]:
    scripts = sorted(p for kind in ARGS for p in INFO.glob(f"*.{kind}"))
    texts = {p: p.read_text(errors="replace") for p in scripts}
    return [p for p in scripts if USES.search(texts[p]) and not SLOW.search(texts[p])]


def installed() -> set[str]:
    listing = query("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n")
    return {line.split()[0] for line in listing.splitlines() if line.endswith(" installed")}


def cached_packages(where: Path) -> list[tuple[Path, Path]]:
    """(deb, its extracted postinst) for each package in apt's cache that is not
    installed and whose postinst uses the rules; the newest version of each."""
    have, newest = installed(), {}
    for deb in sorted(CACHE.glob("*.deb")):
        newest[deb.name.split("_")[0]] = deb
    found = []
    for package, deb in sorted(newest.items()):
        if package in have or deb.stat().st_size > FRESH_MAX_BYTES:
            continue
        control = where / package
        control.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
        postinst = control / "postinst"
        if postinst.is_file():
            text = postinst.read_text(errors="replace")
            if FRESH_USES.search(text) and not SLOW.search(text):
                found.append((deb, postinst))
    return found


def make_server(where: Path, scripts: list[Path], fresh: list[Path]) -> Path:
    (where / "parameters" / NODE / "modules").mkdir(parents=True)
    arch, dpkg = (
        query("dpkg", "--print-architecture"),
        query("dpkg-query", "-W", "-f", "${Version}", "dpkg"),
    )
    for script in [*scripts, *fresh]:
        if script in fresh:  # control/PACKAGE/postinst
            package, kind, version = script.parent.name, "postinst", ""
            module = f"fresh-{package}.postinst"
        else:
            package, kind = script.stem.split(":")[0], script.suffix[1:]
            version = query("dpkg-query", "-W", "-f", "${Version}", package)
            module = re.sub(r"[^A-Za-z0-9_.-]", "-", script.name)
        scripts_dir = where / "modules" / module / "scripts"
        scripts_dir.mkdir(parents=True)
        (scripts_dir / ".maint").write_bytes(script.read_bytes())
        wrapper = WRAPPER.format(package=package, kind=kind, arch=arch, dpkg=dpkg, module=module,
                                 action=ARGS[kind],
                                 version=version if kind == "prerm" else "")  # fmt: skip
        (scripts_dir / "10-run").write_text(wrapper)
        for f in (scripts_dir / ".maint", scripts_dir / "10-run"):
            f.chmod(0o755)
        (where / "parameters" / NODE / "modules" / module).touch()
    return where


Changes = dict[str, dict[str, str]]  # module -> path -> header


def read_report(path: Path) -> tuple[Changes, dict[str, int]]:
    """A dance's change records (device numbers left out: each clone has its own) and the
    exit status of each module's script."""
    report = json.loads(path.read_text())
    changes: Changes = defaultdict(dict)
    for change in report["changes"]:
        header = re.sub(r" device=\[[0-9a-f]+\]", "", change["header"])
        changes[change["module"]][change["path"]] = header
    exits = {r["module"]: r["exit"] for r in report["records"] if r["step"] == "exec"}
    return changes, exits


# Contents that depend on the filesystem object, not on what the script did: compared
# without their md5 like those live cannot repeat.
FILESYSTEM_SPECIFIC = {
    "/var/cache/ldconfig/aux-cache": "the inode numbers and ctimes of the libraries seen",
}
# Contents whose order is random at each run, so that two live runs agree only by chance
# (and the test's own check of that, live against live, then misses them).
RANDOM_ORDER = {
    path: "update-xmlcatalog (Perl) writes its entries in hash order, seeded anew each run"
    for path in (
        "/etc/xml/catalog",
        "/etc/xml/catalog.old",
        "/var/lib/xml-core/catalog",
        "/var/lib/xml-core/catalog.old",
    )
}
NOT_REPEATABLE = {**FILESYSTEM_SPECIFIC, **RANDOM_ORDER}


def without_md5(header: str) -> str:
    return re.sub(r" md5=\[[^]]*\]", " md5=[not repeatable]", header)


def test_noop_shows_the_changes_live_makes_for_real_maintainer_scripts(tmp_path: Path) -> None:
    scripts, fresh = corpus(), cached_packages(tmp_path / "control")
    total = len(scripts) + len(fresh)
    assert total >= 30, f"only {total} maintainer scripts on this machine"
    server = make_server(tmp_path / "srv", scripts, [postinst for _, postinst in fresh])
    (tmp_path / "t").mkdir()
    (tmp_path / "out").mkdir()
    for flag in ("--noop", ""):  # the live dances target the clones only
        argv = ("disco", "dance", *([flag] if flag else []), "--root", str(tmp_path / "t/x/root"))
        refuse_live_dance_on_this_machine(argv, {})
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
         "--net", "bash", "-c", DRIVER, "driver",
         str(tmp_path / "t"), str(server), str(BIN / "disco"), str(tmp_path / "out"),
         sys.executable, *(str(deb) for deb, _ in fresh)],
        check=True, timeout=600,
    )  # fmt: skip
    noop, noop_exits = read_report(tmp_path / "out/noop.json")
    live, live_exits = read_report(tmp_path / "out/live.json")
    again, _ = read_report(tmp_path / "out/again.json")
    modules = sorted(set(noop_exits) | set(live_exits))
    assert len(modules) == total, (tmp_path / "out/noop.out").read_text()[-3000:]
    unrepeatable = sorted({(m, p) for m in live for p in live[m] if live[m][p] != again[m].get(p)})
    mismatches: list[str] = []
    for module in modules:
        if noop_exits.get(module) != live_exits.get(module):
            mismatches.append(
                f"{module}: exit NOOP {noop_exits.get(module)} live {live_exits.get(module)}"
            )
        for path in sorted(set(noop[module]) | set(live[module])):
            shown, made = noop[module].get(path), live[module].get(path)
            relaxed = (module, path) in unrepeatable or path in NOT_REPEATABLE
            if relaxed and shown and made:
                shown, made = without_md5(shown), without_md5(made)
            if shown != made:
                mismatches.append(f"{module}: {path}\n    NOOP: {shown}\n    live: {made}")
    bad = {line.split(":", 1)[0] for line in mismatches}
    matched = len(modules) - len(bad)
    records = sum(len(changes) for changes in live.values())
    print(f"fidelity: {matched}/{len(modules)} scripts match ({100 * matched / len(modules):.1f}%),"
          f" {records} change records live")  # fmt: skip
    print("compared without md5 (live differs from live):")
    for module, path in unrepeatable:
        print(f"    {module}: {path}")
    for line in mismatches:
        print("mismatch:", line)
    assert not mismatches, "\n".join(mismatches)
