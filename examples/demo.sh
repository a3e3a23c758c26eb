#!/usr/bin/env bash
# The seed's example, end to end (run by `make demo`, as root):
#   NOOP on this machine's real root, which stays untouched;
#   live into a scratch root: this machine's /usr read-only, its own /etc, /var, /root,
#   and a stand-in for service(8), so the seed's `service postgresql stop` stops nothing here;
#   then `disco report`.
set -euo pipefail
bin=$1 demo=$2
root=$demo/root
node=localhost.localdomain
disco() { "$bin/disco" --state-dir "$demo/state" "$@"; }
param() { "$bin/disco-param" --state-dir "$demo/state" "$@"; }
step() { printf '\n\033[1m# %s\033[0m\n' "$*"; }

step "the seed's client settings, pointing at the example server in examples/seed"
param set disco/server/uri "$PWD/examples/seed"
param set disco/client/cmds/rsync 'rsync -aWHS'
param dump

step "NOOP=true disco dance   (on this machine's real root: nothing changes)"
NOOP=true disco dance --node "$node"
ls -ld /etc/othermodule 2>&1 || true

step "a scratch root to dance on live"
mkdir -p "$root"/{usr,etc,var/lib,var/tmp,root,tmp} "$demo/usr-local/sbin"
for name in bin sbin lib lib64; do
  [ -L "/$name" ] && ln -sfn "$(readlink "/$name")" "$root/$name"
done
cp /etc/passwd /etc/group "$root/etc/"
printf '#!/bin/sh\necho "(scratch root) service $*: done"\n' > "$demo/usr-local/sbin/service"
chmod 755 "$demo/usr-local/sbin/service"
cleanup() { umount -l "$root/usr/local" "$root/usr" 2>/dev/null || true; }
trap cleanup EXIT
mount --bind -o ro /usr "$root/usr"
mount --bind -o ro "$demo/usr-local" "$root/usr/local"
echo "$root"

step "disco dance --root $root   (live)"
disco dance --node "$node" --root "$root"
cat "$root/etc/othermodule/stuff.cfg"

step "disco dance --root $root --detailed-exitcodes   (again: nothing to change, exit 0)"
disco dance --node "$node" --root "$root" --detailed-exitcodes && echo "exit status $?"

step "disco report"
disco report
