"""Package installs danced on clones of this machine (DESIGN §14, §17), for
tests/test_packages*.py and bench/bench_packages.py.

`make test-debs` keeps a flat repository of the corpus packages (Makefile CORPUS) in
DEBS. A driver, in a mount, pid and network namespace of its own (only loopback up),
serves it on 127.0.0.1, makes a snapshot of /etc, /var/lib and /var/log whose only
package source is that repository (its lists fetched), and clones / over it once per
dance: each dance installs the packages with `apt-get install` in a script of its own
module, NOOP or live (`--effects run`), on its own identical clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import BIN

DEBS = Path(os.environ.get("DISCO_TEST_DEBS", "/var/cache/disco-tests/debs"))
NODE = "pkgs.example.com"
PORT = 8765


def corpus() -> list[str]:
    """The packages of the corpus, or [] if `make test-debs` did not run."""
    listing = DEBS / "corpus.list"
    return listing.read_text().split() if (DEBS / "Release").is_file() and listing.is_file() else []


def make_server(where: Path, script: str, module: str = "pkgs") -> Path:
    """A server with one module whose one script is `script` (bash)."""
    scripts = where / "modules" / module / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "10-install").write_text("#!/bin/bash\nset -e\n" + script)
    (scripts / "10-install").chmod(0o755)
    (where / "parameters" / NODE / "modules").mkdir(parents=True)
    (where / "parameters" / NODE / "modules" / module).touch()
    return where


BALLS = Path(__file__).resolve().parent.parent / "src" / "disco" / "balls"


def make_ball_server(where: Path, ball: str, params: dict[str, str]) -> Path:
    """A server whose one module is disco's ball `ball`, with `params` (path -> value)
    under the node's parameters."""
    shutil.copytree(BALLS / ball / "scripts", where / "modules" / ball / "scripts")
    (where / "parameters" / NODE / "modules").mkdir(parents=True)
    (where / "parameters" / NODE / "modules" / ball).touch()
    for rel, value in params.items():
        path = where / "parameters" / NODE / "parameters" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return where


# Paths whose content holds the time of the run, or what depends on it: compared
# without their md5 (each of them differs between two runs of live itself).
TIMED = {
    "/var/log/apt/history.log": "Start-Date and End-Date of the install",
    "/var/log/apt/term.log": "'Log started' and 'Log ended' times",
    "/var/log/dpkg.log": "each line starts with the time",
    "/var/log/alternatives.log": "each line starts with the time",
    "/var/cache/ldconfig/aux-cache": "the inode numbers and ctimes of the libraries seen",
}


def without_md5(header: str) -> str:
    return re.sub(r" md5=\[[^]]*\]", " md5=[of the run]", header)


def compare(noop: dict[str, str], live: dict[str, str]) -> tuple[list[str], list[str]]:
    """The paths whose records differ, and those of TIMED that are equal only without
    their md5."""
    mismatches, relaxed = [], []
    for path in sorted(set(noop) | set(live)):
        shown, made = noop.get(path), live.get(path)
        if path in TIMED and shown and made and shown != made:
            relaxed.append(path)
            shown, made = without_md5(shown), without_md5(made)
        if shown != made:
            mismatches.append(path)
    return mismatches, relaxed


def install_script(packages: list[str]) -> str:
    return (
        "export DEBIAN_FRONTEND=noninteractive\n"
        f"apt-get install -y -q --no-install-recommends {' '.join(packages)}\n"
    )


# $SOURCE: "serve" (the repository on loopback), "gone" (served for apt-get update, then
# no more), "none" (never served: no lists), "plain" (served, no apt lists: an rpm one).
# Each DANCE is NAME:FLAGS[:KEY=VALUE] (FLAGS with + for spaces; KEY=VALUE a parameter
# set in its state first, by default disco/client/noop/packages=fetch), run in turn; "&"
# between two runs them side by side.
DRIVER = """set -e
T=$1 SERVER=$2 DISCO=$3 OUT=$4 PYTHON=$5 DEBS=$6 PORT=$7 SOURCE=$8
shift 8
ip link set lo up
mount -t tmpfs tmpfs "$T"
mount -t tmpfs -o mode=755 tmpfs /run
if [ "$SOURCE" != none ]; then
  "$PYTHON" -m http.server --bind 127.0.0.1 "$PORT" --directory "$DEBS" >/dev/null 2>&1 &
  server=$!
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
fi
mkdir -p "$T/snap/var"
cp -a /etc "$T/snap/"
cp -a /var/lib /var/log "$T/snap/var/"
"$PYTHON" -c 'import os, sys
for d in sys.argv[1:]: os.setxattr(d, "trusted.overlay.opaque", b"y")' \\
  "$T/snap/etc" "$T/snap/var/lib" "$T/snap/var/log"
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then mkdir -p "$T/snap/$(readlink "/$d")"; cp -a "/$d" "$T/snap/"; fi
done
rm -f "$T/snap/etc/apt/sources.list.d/"*
echo "deb [trusted=yes] http://127.0.0.1:$PORT/ ./" > "$T/snap/etc/apt/sources.list"
rm -rf "$T/snap/var/lib/apt/lists"
mkdir -p "$T/snap/var/lib/apt/lists/partial"
if [ "$SOURCE" = serve ] || [ "$SOURCE" = gone ]; then
  apt-get -qq -o Dir="$T/snap/" -o Dir::State::status="$T/snap/var/lib/dpkg/status" \\
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= update
fi
if [ "$SOURCE" = gone ]; then kill "$server"; wait "$server" || true; fi
printf '#!/bin/sh\\nexit 101\\n' > "$T/snap/policy-rc.d"
chmod 755 "$T/snap/policy-rc.d"
lower=$T/snap:/
clone() {
  mkdir -p "$T/$1/up/usr/sbin" "$T/$1/wk" "$T/$1/root"
  cp -a "$T/snap/policy-rc.d" "$T/$1/up/usr/sbin/"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$T/$1/up,workdir=$T/$1/wk" "$T/$1/root"
}
# $DISCO_TEST_SETUP, if set, runs chrooted on a clone first; every dance's clone is then
# made over what it left (its upper layer, unmounted, as the top lower layer).
if [ -n "${DISCO_TEST_SETUP:-}" ]; then
  clone base
  mount --rbind /dev "$T/base/root/dev"
  mount -t proc proc "$T/base/root/proc"
  chroot "$T/base/root" /bin/bash -c "$DISCO_TEST_SETUP"
  umount -R "$T/base/root"
  rm "$T/base/up/usr/sbin/policy-rc.d"
  lower=$T/base/up:$T/snap:/
fi
dance() {
  name=${1%%:*} flags=${1#*:} setting=
  case $flags in *:*) setting=${flags#*:} flags=${flags%%:*} ;; esac
  # On a root that is not /, NOOP fetches package installs only when told to (§17).
  [ -n "$setting" ] || setting=disco/client/noop/packages=fetch
  if [ -n "$setting" ]; then
    echo "${setting#*=}" | DISCO_STATE=$T/state-${name%%.*} "$(dirname "$DISCO")/disco-param" \
      set "${setting%%=*}"
  fi
  state=$T/state-${name%%.*}  # NAME.2 dances with NAME's state (its cache) again
  # A dance named forget*: what the host side remembers of earlier fetches is gone
  # (noop/fetch_memo.py), the packages stay in the cache.
  case $name in forget*) rm -rf "$state/cache/apt/answers" "$state/cache/apt/verified.json" ;; esac
  DISCO_STATE=$state NO_COLOR=1 NOOP= "$DISCO" dance ${flags//+/ } \\
    --server "$SERVER" --node pkgs.example.com --root "$T/$name/root" \\
    > "$OUT/$name.out" 2>&1 || true
  cp "$state/reports/last.json" "$OUT/$name.json" 2>/dev/null || true
  ls -i "$state/cache/debs" > "$OUT/$name.cache" 2>/dev/null || true
}
for d in "$@"; do [ "$d" = "&" ] || clone "${d%%:*}"; done
pending= pids=
for d in "$@"; do
  if [ "$d" = "&" ]; then pending=1; continue; fi
  if [ -n "$pending" ]; then dance "$d" & pids="$pids $!"; pending=
  else for p in $pids; do wait "$p"; done; pids=; dance "$d" & pids=$!; fi
done
for p in $pids; do wait "$p"; done
for d in "$@"; do
  [ "$d" = "&" ] && continue
  r=${d%%:*}
  (cd "$T/$r/up" && find . | sort) > "$OUT/$r.up"  # what the dance changed in its clone
  cat "$T/$r/root"/var/lib/dpkg/info/*.list > "$OUT/$r.lists" 2>/dev/null || true
  for f in "$T/$r/root"/var/lib/dpkg/info/*.list; do
    p=${f##*/}; p=${p%.list}; sed "s|^|$p |" "$f"
  done > "$OUT/$r.owners" 2>/dev/null || true
done
"""


def dance(
    tmp: Path,
    server: Path,
    dances: list[str],
    source: str = "serve",
    debs: Path = DEBS,
    setup: str = "",
) -> Path:
    """Run the dances ("noop:--noop", "live:--effects+run", "&" between two run side by
    side) on clones, the repository `debs` served; `setup` (bash) runs chrooted on a clone
    that every dance's clone is then made over. Their reports and outputs are in the
    returned directory."""
    (tmp / "t").mkdir(exist_ok=True)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
         "--net", "bash", "-c", DRIVER, "driver", str(tmp / "t"), str(server),
         str(BIN / "disco"), str(out), sys.executable, str(debs), str(PORT), source, *dances],
        check=True, timeout=600, env={**os.environ, "DISCO_TEST_SETUP": setup},
    )  # fmt: skip
    return out


def records(report: Path) -> dict[str, str]:
    """A dance's change records, path -> header (device numbers left out: each clone has
    its own)."""
    data = json.loads(report.read_text())
    return {c["path"]: re.sub(r" device=\[[0-9a-f]+\]", "", c["header"]) for c in data["changes"]}


def owners(listing: Path) -> dict[str, str]:
    """Each path to the package whose dpkg file list names it."""
    found: dict[str, str] = {}
    for line in listing.read_text().splitlines():
        package, _, path = line.partition(" ")
        found.setdefault(path, package.split(":")[0])
    return found


def by_package(paths: list[str], own: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        info = re.match(r"^/var/lib/dpkg/info/([^/:]+)(:[^/.]+)?\.[a-z]+$", path)
        package = own.get(path) or (info.group(1) if info else "(maintainer scripts, apt, dpkg)")
        grouped[package].append(path)
    return grouped
