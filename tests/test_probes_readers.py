"""Hostile probes, disco's own code on the host side (issue 21; probes.py says how).

Host questions answer only what they ask (`pgrep` gives pids, not command lines); the
asker takes questions only from disco; and the change reader, the template and files
delivery, the hard-link relinker and the commit never follow a path a step planted
(a symlink to disco's hidden state, to a FIFO that would hang disco, to a host
directory). A probe that may stop or hang a dance gets a dance of its own, with a
module after it that must still run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from probes import (
    MODES,
    SCRATCH,
    Dances,
    Env,
    Probe,
    Result,
    assert_held,
    dance_of,
    environment,
    host_changes,
    pairs,
    py,
    root_only,
    solo,
    stopped,
    x86_64,
)

pytestmark = [root_only, x86_64]


def pgrep(name: str, *forms: str) -> Probe:
    asks = "".join(f'pgrep {form} "@CANARY_TOKEN@" | sed "s/^/ANSWER $P: /"\n' for form in forms)
    return Probe(name, "host questions",
                 f"ask the host `pgrep {forms[0]}` about a canary process whose command line"
                 " and name hold secrets: the answer gives its pid, never its command line",
                 asks + 'pgrep -af "@CANARY_TOKEN@" | grep -q -- --secret= && escaped '
                 '"the host\'s answer holds a command line"\n',
                 modes=("noop-host",), host=answer_without_secrets(name))  # fmt: skip


def answer_without_secrets(name: str) -> Callable[[Env], list[str]]:
    def check(env: Env) -> list[str]:
        answers = [ln for ln in env.result.lines if ln.startswith(f"ANSWER {name}: ")]
        secrets = (env.host.token("canary").replace("disco-probe", "secret"), env.host.comm_secret)
        return [f"the answer {a!r} holds a secret" for a in answers for s in secrets if s in a]

    return check


def secret_not_shown(env: Env) -> list[str]:
    out = env.result.stdout + env.result.stderr
    md5 = hashlib.md5(env.host.secret.encode()).hexdigest()
    return [f"disco's hidden state ({s}) is in the dance's output" for s in
            (env.host.secret, md5) if s in out]  # fmt: skip


# fmt: off
PROBES = [
    pgrep("pgrep-a", "-a -f", "-af", "-f -a"),
    pgrep("pgrep-list-full", "--list-full -f", "-f --list-full"),
    pgrep("pgrep-l", "-l -f", "--list-name -f", "-lf"),
    Probe("reader-secret-link", "host-side readers",
          "plant symlinks to disco's hidden state (a new one, and one over a file an earlier"
          " module made) for the change reader, which must not read through them",
          r"""
echo old > /etc/probe-rsl-@UUID@
ln -s @SECRET_FILE@ /etc/probe-rsl-new-@UUID@
""", then={"scripts/10-relink.sh": "ln -sf @SECRET_FILE@ /etc/probe-rsl-@UUID@\n"},
          host=secret_not_shown),
    Probe("template-link", "host-side readers",
          "plant a symlink to a host path where a later module's template is delivered: the"
          " template's output must replace the symlink, never be written through it",
          "ln -s @CANARY@/template-link-@UUID@ /etc/probe-tpl-@UUID@\n",
          then={"templates/etc/probe-tpl-@UUID@": "echo templated\n"}),
    Probe("files-dir-link", "host-side readers",
          "plant directory symlinks (absolute, and relative with ../ past the root) to a host"
          " directory where a later module's files/ are delivered: followed inside the root,"
          " never on the host",
          r"""
ln -s @CANARY@/_files-dir-link /etc/probe-dir-@UUID@
ln -s ../../../../../../../../../../../..@CANARY@/_files-dir-link /etc/probe-rel-@UUID@
""", then={"files/etc/probe-dir-@UUID@/payload": "delivered\n",
           "files/etc/probe-rel-@UUID@/payload": "delivered\n"}),
]
# A probe of each below may stop or hang the dance: each gets one of its own.
SOLO = [
    Probe("passwd-fifo", "host-side readers",
          "replace /etc/passwd by a symlink to a FIFO of the host's (opened for reading, it"
          " blocks for ever): reading the step's changes must not hang the dance",
          "ln -sf @FIFO@ /etc/passwd\n"),
    Probe("relink-parent", "host-side readers",
          "change one name of a hard-linked file and replace the directory of its other name"
          " by a symlink to a host directory: the relinker must not make directories or links"
          " there",
          r"""
echo v2 >> /srv/hl/x/a
rm -rf /srv/hl/y
ln -s @CANARY@/_relink-parent /srv/hl/y
""", modes=SCRATCH),
    Probe("ask-tickets", "host questions",
          "take every ticket of the asker and never ask: the next module's question must"
          " still be answered",
          r"""
t=/var/disco/ask/tickets
if [ -p $t ]; then
  timeout 5 bash -c "exec 3<$t; for i in \$(seq 64); do read -r -N 1 -u 3 x || exit; done"
fi
""", modes=("noop-host",)),
    Probe("ask-fifo-symlink", "host questions",
          "replace the asker's FIFOs by symlinks to a host FIFO that nobody writes",
          py(r"""
d = "/var/disco/ask"
for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    try:
        os.unlink(f"{d}/{name}")
        os.symlink("@FIFO@", f"{d}/{name}")
        escaped("replaced the asker's", name)
    except OSError:
        pass
"""), modes=("noop-host",)),
]
# fmt: on
ASK_AFTER = (
    'P=after\ntimeout 20 pidof disco-no-such-process; echo "ANSWERED $?"\necho "PROBE-AFTER"\n'
)


def readers_dance(env: Env) -> Result:
    (env.canary / "_files-dir-link").mkdir()
    return dance_of(PROBES)(env)


@pytest.fixture(scope="module")
def dances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of every probe above per mode."""
    with Dances(tmp_path_factory, "readers", readers_dance) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_disco_reads_a_steps_work_without_following_it_out(
    dances: Dances, mode: str, probe: Probe
) -> None:
    assert_held(dances(mode), probe)


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(SOLO))
def test_a_planted_path_neither_hangs_nor_stops_a_dance(
    mode: str, probe: Probe, tmp_path: Path
) -> None:
    with environment(mode, tmp_path) as env:
        (env.canary / "_relink-parent").mkdir()
        after = ASK_AFTER if probe.name.startswith("ask-") else None
        result = solo(env, probe, **({"after": after} if after else {}))
        unanswered = ["the asker no longer answers"] if "ANSWERED 124" in result.lines else []
        assert_held(env, probe, also=stopped(result) + unanswered)


@pytest.mark.probe
@pytest.mark.parametrize("mode", MODES)
def test_the_host_is_as_it_was_after_the_dance(dances: Dances, mode: str) -> None:
    changes = host_changes(dances(mode))
    assert not changes, changes
