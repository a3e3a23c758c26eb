#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "services": systemd units enabled or disabled, running or stopped, as
# parameters services/UNIT/{enabled,running} say (README.md). Enabling is done the way
# `systemctl enable` does it, with the symlinks its [Install] section asks for, so that it
# needs no running systemd and NOOP shows every link; starting and stopping go to systemctl.
set -euo pipefail
ball=services
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="enabled running"
UNIT_DIRS="/etc/systemd/system /lib/systemd/system /usr/lib/systemd/system"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }
has() { [ -f "$P/$1" ]; }

[ -e "$P" ] || exit 0
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/UNIT/..." >&2; exit 1; }
names=$(ls -A "$P" | LC_ALL=C sort)

unit_of() { [[ $1 == *.* ]] && echo "$1" || echo "$1.service"; }
unit_file() {  # the unit's file, the first of the unit directories that has it
  for d in $UNIT_DIRS; do
    if [ -f "$d/$1" ] && ! [ -L "$d/$1" ]; then echo "$d/$1"; return; fi
  done
}
# The packages ball ran before (requires: after packages). Where a package of its install
# list is still not installed, its install was only said (NOOP, or live on a scratch root
# where outside effects are intercepted): a unit it brings is not there yet to enable.
PKG="/var/disco/parameters/$DISCO_NODE/parameters/packages/install"
install_said() {
  local p
  [ -f "$PKG" ] || return 1
  for p in $(tr ', \t' '\n\n\n' <"$PKG"); do
    if command -v dpkg-query >/dev/null && [ -d /var/lib/dpkg ]; then
      dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || return 0
    elif command -v rpm >/dev/null; then
      rpm -q --quiet "$p" || return 0
    fi
  done
  return 1
}
pending=" "  # units left for the dance that really installs their package
install_targets() {  # WantedBy= and RequiredBy= of the [Install] section: "wants T" lines
  awk '/^\[/ { inst = ($0 == "[Install]") } inst && /^(WantedBy|RequiredBy)=/ {
    kind = ($0 ~ /^Wanted/) ? "wants" : "requires"; sub(/^[^=]*=/, "")
    n = split($0, t, /[ \t]+/); for (i = 1; i <= n; i++) if (t[i] != "") print kind, t[i] }' "$1"
}

for s in $names; do
  if ! [[ $s =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then bad "'$s' is not a unit name"; continue; fi
  if ! [ -d "$P/$s" ]; then bad "$s: must be a map: $ball/$s/{enabled,running}"; continue; fi
  for k in $(ls -A "$P/$s"); do
    [[ " $KNOWN " == *" $k "* ]] || bad "$s: unknown parameter '$k'; known: $KNOWN"
  done
  for k in $KNOWN; do
    case "$(val "$s/$k")" in "" | yes | no) ;; *) bad "$s/$k: '$(val "$s/$k")' is not yes or no" ;; esac
  done
  unit=$(unit_of "$s")
  if [ "$(val "$s/enabled")" = yes ]; then
    file=$(unit_file "$unit")
    if [ -z "$file" ] && install_said; then
      echo "warning: $ball: $s: no unit file $unit yet: packages/install is not installed" \
        "(only said, not done); enabled and started once it is"
      pending+="$s "
    elif [ -z "$file" ]; then bad "$s: no unit file $unit in $UNIT_DIRS"
    elif [ -z "$(install_targets "$file")" ]; then bad "$s: $file has no WantedBy= or RequiredBy= in [Install]: it cannot be enabled"
    fi
  fi
done
[ "$err" = 0 ] || exit 1

for s in $names; do
  [[ $pending != *" $s "* ]] || continue
  unit=$(unit_of "$s")
  case "$(val "$s/enabled")" in
    yes)
      file=$(unit_file "$unit")
      while read -r kind target; do
        link="/etc/systemd/system/$target.$kind/$unit"
        if [ "$(readlink -f "$link" || true)" != "$(readlink -f "$file")" ]; then
          mkdir -p "${link%/*}"
          ln -sfn "$file" "$link"
          echo "services: enabled $unit ($link)"
        fi
      done < <(install_targets "$file")
      ;;
    no)
      for link in /etc/systemd/system/*.wants/"$unit" /etc/systemd/system/*.requires/"$unit"; do
        if [ -L "$link" ]; then rm -f "$link"; echo "services: disabled $unit ($link)"; fi
      done
      ;;
  esac
  # A question, then an outside effect: NOOP asks the first and intercepts the second.
  case "$(val "$s/running")" in
    yes) systemctl is-active --quiet "$unit" || systemctl start "$unit" ;;
    no) ! systemctl is-active --quiet "$unit" || systemctl stop "$unit" ;;
  esac
done
