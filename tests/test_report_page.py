"""`disco report --html` opened in a real browser (issue 11): Debian's chromium, headless,
installed by `make test` when missing. The page renders, logs no console error, and its
screenshot is a page, not a blank."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from conftest import Run
from test_dance_steps import dance, make_server

WIDTH, HEIGHT = 1280, 1000
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is missing: 'make test' installs it (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="disco-chromium-")
    try:
        return subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
            + list(args),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(stderr: str) -> list[str]:
    """What the page itself logged: chromium writes a page's console as CONSOLE lines."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the raw (filtered) scanlines of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, width, height = 8, b"", 0, 0
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunk = data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        at += 12 + length
    return width, height, zlib.decompress(idat)


def test_the_console_check_sees_a_page_error(tmp_path: Path) -> None:
    """The control: a page with a script error is caught by the check used below."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>nosuchfunction();</script></body></html>")
    result = chromium("--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_errors(result.stderr), result.stderr[-2000:]


def test_the_html_report_renders_in_a_real_browser(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    modules = {
        "a": {
            "files/etc/a.conf": "made by a\n",
            "scripts/10-edit.sh": "echo more >> /etc/a.conf\n",
        },
        "b": {"scripts/10-fail.sh": "echo broken > /etc/b.conf\nsleep 0.1\nexit 3\n"},
    }
    server = make_server(tmp_path / "srv", modules)
    assert dance(cmd, server, scratch_root).returncode == 1  # b fails
    page = tmp_path / "report.html"
    written = cmd("disco", "report", "--html", str(page))
    assert written.returncode == 0, written.stderr

    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_errors(dom.stderr), console_errors(dom.stderr)
    assert dom.stdout.count('class="bar"') >= 4  # template-less a: fetch, its exec, diffs...
    assert 'class="row failed"' in dom.stdout and "b: exec 10-fail.sh" in dom.stdout
    assert "<details><summary" in dom.stdout and "&gt; more" in dom.stdout  # a folded diff
    assert "failed steps" in dom.stdout

    shot = tmp_path / "report.png"
    result = chromium(f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert not console_errors(result.stderr), console_errors(result.stderr)
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(set(pixels)) > 16, "the screenshot is blank"
