#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "files": lines in a file (files/lines/ID/...) and directory trees with an
# owner and modes (files/dirs/ID/...), as the parameters say (README.md). Only what
# differs is touched.
set -euo pipefail
ball=files
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }
has() { [ -f "$P/$1" ]; }
entries() { if [ -d "$P/$1" ]; then ls -A "$P/$1" | LC_ALL=C sort; fi; }
check_keys() {  # check_keys WHERE KNOWN...
  local where=$1 k
  shift
  for k in $(ls -A "$P/$where"); do
    [[ " $* " == *" $k "* ]] || bad "$where: unknown parameter '$k'; known: $*"
  done
}

[ -e "$P" ] || exit 0
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/{lines,dirs}/ID/..." >&2; exit 1; }
for k in $(ls -A "$P"); do
  case $k in lines | dirs) [ -d "$P/$k" ] || bad "$k: must be a map: $ball/$k/ID/..." ;; *) bad "unknown parameter '$k'; known: lines dirs" ;; esac
done
[ "$err" = 0 ] || exit 1

for id in $(entries lines); do
  e=lines/$id
  if ! [ -d "$P/$e" ]; then bad "$e: must be a map: $e/{path,line,match,state}"; continue; fi
  check_keys "$e" path line match state
  [[ $(val "$e/path") == /* ]] || bad "$e/path: '$(val "$e/path")' is not an absolute path"
  case "$(val "$e/state")" in "" | present | absent) ;; *) bad "$e/state: '$(val "$e/state")' is not present or absent" ;; esac
  if [ "$(val "$e/state")" != absent ] && ! has "$e/line"; then bad "$e: no line: give $e/line"; fi
  if [[ $(val "$e/line") == *$'\n'* ]]; then bad "$e/line: must be one line"; fi
  if has "$e/match"; then
    rc=0
    grep -qE -- "$(val "$e/match")" </dev/null 2>/dev/null || rc=$?
    [ "$rc" -le 1 ] || bad "$e/match: '$(val "$e/match")' is not an extended regular expression"
  fi
  if [ -e "$(val "$e/path")" ] && ! [ -f "$(val "$e/path")" ]; then bad "$e/path: $(val "$e/path") is not a regular file"; fi
done
for id in $(entries dirs); do
  e=dirs/$id
  if ! [ -d "$P/$e" ]; then bad "$e: must be a map: $e/{path,owner,group,mode,file_mode,recurse}"; continue; fi
  check_keys "$e" path owner group mode file_mode recurse
  [[ $(val "$e/path") == /?* ]] || bad "$e/path: '$(val "$e/path")' is not an absolute path"
  [ "$(val "$e/path")" != / ] || bad "$e/path: not /"
  if has "$e/owner" && ! awk -F: -v n="$(val "$e/owner")" '$1 == n { f = 1 } END { exit !f }' /etc/passwd; then
    bad "$e/owner: no user '$(val "$e/owner")' in /etc/passwd"
  fi
  if has "$e/group" && ! awk -F: -v n="$(val "$e/group")" '$1 == n { f = 1 } END { exit !f }' /etc/group; then
    bad "$e/group: no group '$(val "$e/group")' in /etc/group"
  fi
  for k in mode file_mode; do
    if has "$e/$k" && ! [[ $(val "$e/$k") =~ ^[0-7]{3,4}$ ]]; then bad "$e/$k: '$(val "$e/$k")' is not an octal mode like 0755"; fi
  done
  case "$(val "$e/recurse")" in "" | yes | no) ;; *) bad "$e/recurse: '$(val "$e/recurse")' is not yes or no" ;; esac
  if [ -e "$(val "$e/path")" ] && ! [ -d "$(val "$e/path")" ]; then bad "$e/path: $(val "$e/path") is not a directory"; fi
done
[ "$err" = 0 ] || exit 1

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for id in $(entries lines); do
  e=lines/$id path=$(val "lines/$id/path")
  absent=$([ "$(val "$e/state")" != absent ] || echo 1)
  [ -f "$path" ] || [ -n "$absent" ] || { mkdir -p "${path%/*}"; : >"$path"; }
  [ -f "$path" ] || continue
  # The first line that is the line (or matches `match`) becomes the line, later ones go;
  # absent: they all go. No such line: it is appended.
  awk -v re="$(val "$e/match")" -v line="$(val "$e/line")" -v absent="$absent" '
    $0 == line || (re != "" && $0 ~ re) { if (!absent && !done) print line; done = 1; next }
    { print }
    END { if (!done && !absent) print line }' "$path" >"$tmp"
  if ! cmp -s "$tmp" "$path"; then
    cat "$tmp" >"$path"  # in place: the file keeps its owner and mode
    echo "files: $e: $path"
  fi
done
for id in $(entries dirs); do
  e=dirs/$id path=$(val "dirs/$id/path") owner=$(val "dirs/$id/owner") group=$(val "dirs/$id/group")
  mode=$(val "dirs/$id/mode") file_mode=$(val "dirs/$id/file_mode")
  depth=(-maxdepth 0)
  [ "$(val "$e/recurse")" != yes ] || depth=()
  [ -d "$path" ] || { mkdir -p "$path"; echo "files: $e: created $path"; }
  if [ -n "$owner" ]; then find "$path" "${depth[@]}" ! -user "$owner" -exec chown -h "$owner" {} +; fi
  if [ -n "$group" ]; then find "$path" "${depth[@]}" ! -group "$group" -exec chgrp -h "$group" {} +; fi
  if [ -n "$mode" ]; then find "$path" "${depth[@]}" -type d ! -perm "$mode" -exec chmod "$mode" {} +; fi
  if [ -n "$file_mode" ]; then find "$path" "${depth[@]}" -type f ! -perm "$file_mode" -exec chmod "$file_mode" {} +; fi
done
