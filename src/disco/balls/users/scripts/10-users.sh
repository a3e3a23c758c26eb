#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "users": local accounts as parameters users/NAME/... say (README.md).
set -euo pipefail
ball=users
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="state uid group groups home shell comment authorized_keys"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }
has() { [ -f "$P/$1" ]; }
words() { tr ', \t' '\n\n\n' | sed '/^$/d' | LC_ALL=C sort -u; }  # a list, one per line
field() { awk -F: -v k="$2" -v f="$3" '$1 == k { print $f }' "$1"; }
# The groups ball ran before this one (requires: after groups), from groups/NAME/...
G="/var/disco/parameters/$DISCO_NODE/parameters/groups"
member_of() {  # the groups (not absent) whose groups/NAME/members names user $1
  local g list
  [ -d "$G" ] || return 0
  for g in $(ls -A "$G"); do
    if [ -f "$G/$g/members" ] && ! grep -qx absent "$G/$g/state" 2>/dev/null; then
      list=$(words <"$G/$g/members")
      if grep -qxF -- "$1" <<<"$list"; then echo "$g"; fi
    fi
  done
}
supplementary() { { val "$1/groups" | words; member_of "$1"; } | words; }  # one a line

[ -e "$P" ] || exit 0
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/NAME/..." >&2; exit 1; }
names=$(ls -A "$P" | LC_ALL=C sort)
NAME='^[a-z_][a-z0-9_-]{0,31}$'

# Every entry is checked before anything changes.
for u in $names; do
  if ! [[ $u =~ $NAME ]]; then bad "'$u' is not a user name (a-z 0-9 _ -, at most 32)"; continue; fi
  if ! [ -d "$P/$u" ]; then bad "$u: must be a map: $ball/$u/{${KNOWN// /,}}"; continue; fi
  for k in $(ls -A "$P/$u"); do
    [[ " $KNOWN " == *" $k "* ]] || bad "$u: unknown parameter '$k'; known: $KNOWN"
  done
  case "$(val "$u/state")" in
    "" | present | locked | absent) ;;
    *) bad "$u/state: '$(val "$u/state")' is not present, locked or absent" ;;
  esac
  if has "$u/uid" && ! [[ $(val "$u/uid") =~ ^[0-9]+$ ]]; then bad "$u/uid: '$(val "$u/uid")' is not a number"; fi
  for g in $(val "$u/group") $(val "$u/groups" | words); do
    [[ $g =~ $NAME ]] || bad "$u: '$g' is not a group name"
  done
  if [ "$(val "$u/state")" != absent ]; then
    for g in $(val "$u/group") $(supplementary "$u"); do
      if [[ $g =~ $NAME ]] && [ -z "$(field /etc/group "$g" 1)" ]; then
        bad "$u: no group '$g' in /etc/group; make it with the groups ball (groups/$g/...)"
      fi
    done
  fi
  for k in home shell; do
    if has "$u/$k" && ! [[ $(val "$u/$k") =~ ^/[^:[:space:]]*$ ]]; then bad "$u/$k: '$(val "$u/$k")' is not an absolute path"; fi
  done
  if [[ $(val "$u/comment") == *[:$'\n']* ]]; then bad "$u/comment: must be one line without ':'"; fi
  if has "$u/authorized_keys"; then
    while IFS= read -r key; do
      [[ -z $key || $key == \#* || $key =~ (^|[[:space:]])(ssh|ecdsa-sha2|sk-)[a-z0-9@.-]+[[:space:]]+AAAA ]] ||
        bad "$u/authorized_keys: '${key:0:40}' is not an OpenSSH public key line"
    done <<<"$(val "$u/authorized_keys")"
  fi
done
[ "$err" = 0 ] || exit 1

for u in $names; do
  state=$(val "$u/state")
  entry=$(awk -F: -v u="$u" '$1 == u' /etc/passwd)
  if [ "$state" = absent ]; then
    if [ -n "$entry" ]; then userdel "$u"; echo "users: removed $u (its home is kept)"; fi
    continue
  fi
  args=()
  if [ -z "$entry" ]; then
    if has "$u/uid"; then args+=(--uid "$(val "$u/uid")"); fi
    if has "$u/group"; then args+=(--gid "$(val "$u/group")")
    elif [ -n "$(field /etc/group "$u" 1)" ]; then args+=(--gid "$u")
    else args+=(--user-group); fi
    # Its groups, and those whose groups/NAME/members names it: it was not there for the
    # groups ball to add.
    groups=$(supplementary "$u")
    if [ -n "$groups" ]; then args+=(--groups "$(paste -sd, <<<"$groups")"); fi
    home=$(val "$u/home")
    args+=(--create-home --home-dir "${home:-/home/$u}")
    if has "$u/shell"; then args+=(--shell "$(val "$u/shell")"); fi
    if has "$u/comment"; then args+=(--comment "$(val "$u/comment")"); fi
    useradd "${args[@]}" "$u"
    echo "users: created $u"
  else
    IFS=: read -r _ _ uid gid comment home shell <<<"$entry"
    if has "$u/uid" && [ "$(val "$u/uid")" != "$uid" ]; then args+=(--uid "$(val "$u/uid")"); fi
    if has "$u/group" && [ "$(field /etc/group "$(val "$u/group")" 3)" != "$gid" ]; then
      args+=(--gid "$(val "$u/group")")
    fi
    if has "$u/groups"; then
      now=$(awk -F: -v u="$u" '{ n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) print $1 }' /etc/group | words)
      want=$(supplementary "$u")
      [ "$now" = "$want" ] || args+=(--groups "$(paste -sd, <<<"$want")")
    fi
    if has "$u/home" && [ "$(val "$u/home")" != "$home" ]; then args+=(--home "$(val "$u/home")"); fi
    if has "$u/shell" && [ "$(val "$u/shell")" != "$shell" ]; then args+=(--shell "$(val "$u/shell")"); fi
    if has "$u/comment" && [ "$(val "$u/comment")" != "$comment" ]; then args+=(--comment "$(val "$u/comment")"); fi
    if [ ${#args[@]} -gt 0 ]; then usermod "${args[@]}" "$u"; echo "users: changed $u: ${args[*]}"; fi
  fi
  if [ "$state" = locked ] && [[ $(field /etc/shadow "$u" 2) != '!'* ]]; then
    usermod --lock "$u"
    echo "users: locked $u"
  fi
  if has "$u/authorized_keys"; then
    home=$(field /etc/passwd "$u" 6)
    owner="$(field /etc/passwd "$u" 3):$(field /etc/passwd "$u" 4)"
    keys="$home/.ssh/authorized_keys"
    if ! [ -f "$keys" ] || [ "$(cat "$keys")" != "$(val "$u/authorized_keys")" ]; then
      mkdir -p "$home/.ssh"
      # shellcheck disable=SC1003  # sed's "$a\\" adds a last newline only where missing
      val "$u/authorized_keys" | sed '$a\' >"$keys"
      echo "users: wrote $keys"
    fi
    for path in "$home/.ssh:700" "$keys:600"; do  # only what differs: no needless copy-up
      [ "$(stat -c %a "${path%:*}")" = "${path##*:}" ] || chmod "${path##*:}" "${path%:*}"
      [ "$(stat -c %u:%g "${path%:*}")" = "$owner" ] || chown "$owner" "${path%:*}"
    done
  fi
done
