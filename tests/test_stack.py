"""Folding NOOP layers: one folded layer shows exactly what the stack showed."""

from __future__ import annotations

from pathlib import Path

from disco.engine.runner import run_step
from disco.engine.sandbox import Step, upper_of
from disco.engine.stack import fold

FIRST = """
echo one > /etc/a; echo keep > /etc/b; mkdir -p /srv/d/e; echo deep > /srv/d/e/f
rm -r /srv/old; rm /etc/motd; echo file > /srv/dir-to-file-later; mkdir /srv/gone-dir
ln -s /etc/a /srv/link; chmod 700 /srv; mkdir /etc/new.d; echo x > /etc/new.d/f
rm -r /srv/old2; mkdir /srv/old2; echo y > /srv/old2/t
"""
SECOND = """
rm /etc/a; echo two > /etc/b; rm -r /srv/d; mkdir /srv/old; echo new > /srv/old/x
echo back > /etc/motd; rm /srv/dir-to-file-later; mkdir /srv/dir-to-file-later
rmdir /srv/gone-dir; echo now-a-file > /srv/gone-dir; ln -sfn /etc/b /srv/link
mkdir -p /srv/d; echo fresh > /srv/d/g; chmod 750 /srv; rm /etc/new.d/f; rm /srv/old2/t
"""
SHOW = (
    "find /etc /srv -xdev -printf '%p %M %l\\n' | sort; cat /etc/b /srv/old/x /srv/d/g /etc/motd;"
    " ls -A /etc/new.d /srv/old2"  # readdir alone: a stray whiteout would show
)


def view(root: Path, layer: Path, lowers: tuple[Path, ...], out: Path) -> str:
    with out.open("w") as f:
        result = run_step(
            Step(
                ("bash", "-c", SHOW), root=root, layer=layer, lower_layers=lowers, stdout=f.fileno()
            )
        )
    assert result.returncode == 0
    return out.read_text()


def test_a_folded_layer_shows_what_the_stack_showed(scratch_root: Path, tmp_path: Path) -> None:
    root = scratch_root
    (root / "etc/motd").write_text("hello\n")
    (root / "srv/old").mkdir()
    (root / "srv/old/y").write_text("old\n")
    (root / "srv/old2").mkdir()
    (root / "srv/old2/z").write_text("old\n")
    one, two = tmp_path / "1", tmp_path / "2"
    assert run_step(Step(("bash", "-ec", FIRST), root=root, layer=one)).returncode == 0
    assert (
        run_step(
            Step(("bash", "-ec", SECOND), root=root, layer=two, lower_layers=(one,))
        ).returncode
        == 0
    )
    stacked = view(root, tmp_path / "v1", (two, one), tmp_path / "stacked")
    fold(upper_of(two), upper_of(one), root)
    folded = view(root, tmp_path / "v2", (one,), tmp_path / "folded")
    assert folded == stacked
    assert "/srv/old/y" not in folded  # the recreated directory hides the root's content
    # Deletions where nothing beneath shows: gone, not left as whiteouts to be listed.
    assert folded.endswith("/etc/new.d:\n\n/srv/old2:\n")
    assert "two\nnew\nfresh\nback\n" in folded
