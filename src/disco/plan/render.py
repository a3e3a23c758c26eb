"""The outputs of plans, from their documents (document.py): the terminal's summary,
JUnit XML, a Markdown summary for a pull request or a CI job, and the HTML page. Each
takes a list of node documents, so that a fleet's plans render as one node's do."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

from disco.report.page import STYLE

MARKDOWN_LIMIT = 60_000  # characters: GitHub refuses a comment or job summary past 65,536
WHAT_EXITS = {0: "no delta", 2: "a delta", 4: "head fails", 6: "a delta, and head fails"}

Document = dict[str, Any]


def entry_line(entry: dict[str, Any]) -> str:
    """`/etc/x changed (content, mode) -1 +1 [ntp: files]`."""
    what = f" ({', '.join(entry['what'])})" if entry["what"] else ""
    summary = f" {entry['summary']}" if entry["summary"] else ""
    step = f" [{entry['module']}: {entry['step']}]" if entry["module"] else ""
    return f"{entry['path']} {entry['kind']}{what}{summary}{step}"


def head_failures(document: Document) -> list[str]:
    return [m for m in document["failed"]["head"] if m not in document["failed"]["base"]]


# -- the terminal ---------------------------------------------------------------------


def text_lines(document: Document) -> list[tuple[str, str]]:
    """(kind, text) lines: kind "info", "warning" or "text" (a diff, as it is)."""
    d = document
    out = [
        (
            "info",
            f"Plan of node {d['node']} on {d['root']}: base {d['base']['hash'][:12]}"
            f" ({d['base']['uri']}), head {d['head']['hash'][:12]} ({d['head']['uri']})",
        )
    ]
    for entry in d["delta"]:
        out.append(("info", "Delta: " + entry_line(entry)))
        if entry.get("diff"):
            out.append(("text", entry["diff"]))
    for line in d["would_execute"]["added"]:
        out.append(("info", f"Would execute, head only : {line}"))
    for line in d["would_execute"]["removed"]:
        out.append(("info", f"Would execute, base only : {line}"))
    for change in d["drift"]:
        out.append(
            (
                "warning",
                f"Drift (base alone would change it): {change['module']}: {change['step']}:"
                f" {change['path']} : {change['kind']}",
            )
        )
    for module in head_failures(d):
        out.append(("warning", f"head fails: module {module}"))
    out.append(
        (
            "info",
            f"Plan: {len(d['delta'])} path(s) differ, {len(d['drift'])} drift,"
            f" exit {d['exit']} ({WHAT_EXITS.get(d['exit'], '')})",
        )
    )
    return out


# -- JUnit ------------------------------------------------------------------------------


def junit(documents: Sequence[Document]) -> str:
    """A testsuite per node with properties base, head and node; a testcase per module
    of head's dance, failing where head's module fails (or is skipped for a failed
    requirement). Each testcase's system-out lists the module's delta."""
    top = ET.Element("testsuites", name="disco plan")
    tests = failures = 0
    for d in documents:
        modules = _modules(d)
        suite = ET.SubElement(
            top,
            "testsuite",
            name=f"disco plan {d['node']}",
            hostname=d["node"],
            timestamp=d["created"][:19],
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("base", _side(d["base"])),
            ("head", _side(d["head"])),
            ("node", d["node"]),
        ):
            ET.SubElement(props, "property", name=name, value=value)
        failed = 0
        for module in modules:
            case = ET.SubElement(suite, "testcase", classname=d["node"], name=module, time="0")
            if module in d["failed"]["head"]:
                failed += 1
                was = " (it fails in base too)" if module in d["failed"]["base"] else ""
                ET.SubElement(
                    case, "failure", type="failed", message=f"module {module} fails in head{was}"
                ).text = (
                    f"disco plan: module {module} failed, or was skipped for a failed"
                    f" requirement, in the NOOP dance of head on node {d['node']}{was}"
                )
            lines = [entry_line(e) for e in d["delta"] if e["module"] == module]
            if lines:
                ET.SubElement(case, "system-out").text = "\n".join(lines)
        suite.set("tests", str(len(modules)))
        suite.set("failures", str(failed))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        suite.set("time", "0")
        tests, failures = tests + len(modules), failures + failed
    top.set("tests", str(tests))
    top.set("failures", str(failures))
    top.set("errors", "0")
    ET.indent(top)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(top, "unicode") + "\n"


def _side(side: dict[str, str]) -> str:
    return f"{side['uri']} {side['hash']}"


def _modules(d: Document) -> list[str]:
    """Head's modules: those of its failures and delta, with every other one (in order)."""
    names: list[str] = list(d.get("modules", []))
    for name in [*d["failed"]["head"], *(e["module"] for e in d["delta"] if e["module"])]:
        if name not in names:
            names.append(name)
    return names


# -- Markdown -----------------------------------------------------------------------------


def markdown(documents: Sequence[Document], limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment or CI job summary: a table of what differs per node, then
    the diffs as long as they fit under `limit` characters; what did not fit is said."""
    head = ["## disco plan", ""]
    for d in documents:
        fails = head_failures(d)
        head.append(
            f"**{d['node']}**: {len(d['delta'])} path(s) differ,"
            f" {len(d['drift'])} drift, {len(fails)} module(s) fail in head"
            f" (exit {d['exit']}: {WHAT_EXITS.get(d['exit'], '')})  "
        )
        head.append(
            f"base `{d['base']['hash'][:12]}` {_md(d['base']['uri'])},"
            f" head `{d['head']['hash'][:12]}` {_md(d['head']['uri'])}"
        )
        head.append("")
        if d["delta"]:
            head += ["| path | kind | what | lines | module: step |", "|---|---|---|---|---|"]
            for e in d["delta"]:
                head.append(
                    f"| `{_cell(e['path'])}` | {e['kind']} | {', '.join(e['what'])} |"
                    f" {e['summary']} | {_cell(e['module'])}: {_cell(e['step'])} |"
                )
            head.append("")
        for line in d["would_execute"]["added"]:
            head.append(f"- would execute, head only: `{_cell(line)}`")
        for line in d["would_execute"]["removed"]:
            head.append(f"- would execute, base only: `{_cell(line)}`")
        for module in fails:
            head.append(f"- :x: module `{_cell(module)}` fails in head")
        if d["drift"]:
            head.append(
                f"- drift: base alone changes {len(d['drift'])} path(s): "
                + ", ".join(f"`{_cell(c['path'])}`" for c in d["drift"][:20])
                + (" ..." if len(d["drift"]) > 20 else "")
            )
        head.append("")
    text = "\n".join(head)
    left: list[str] = []
    diffs = [(d["node"], e) for d in documents for e in d["delta"] if e.get("diff")]
    parts: list[str] = []
    for node, e in diffs:
        fence = "````" if "```" in e["diff"] else "```"
        part = (
            f"<details><summary>{html.escape(node)}: {html.escape(e['path'])}"
            f" {e['summary']}</summary>\n\n{fence}diff\n{e['diff']}\n{fence}\n</details>\n"
        )
        if len(text) + sum(map(len, parts)) + len(part) + 400 > limit:
            left.append(f"{node}: {e['path']}")
            continue
        parts.append(part)
    if len(text) > limit - 400:  # the tables alone are too long: cut them
        cut = text[: limit - 400].rsplit("\n", 1)[0]
        left.insert(0, f"{text.count(chr(10)) - cut.count(chr(10))} line(s) of the summary")
        text = cut
    out = text + ("\n### Diffs\n\n" + "\n".join(parts) if parts else "")
    if left:
        note = (
            f"\n_Left out to stay under {limit:,} characters: {len(left)} item(s)"
            f" ({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}); the JSON"
            " document (`disco plan --json`) has them all._\n"
        )
        out = out[: limit - len(note)] + note
    return out


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _cell(text: str) -> str:
    return _md(text).replace("`", "'").replace("\n", " ")


# -- HTML --------------------------------------------------------------------------------

PLAN_STYLE = """
table.delta { border-collapse: collapse; margin: .5em 0; }
table.delta td, table.delta th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
.added { color: #2a7d2a; } .removed { color: #b00; }
"""


def plan_html(documents: Sequence[Document]) -> str:
    """The report page's look (report/page.py), with the plan view: per node the delta
    with its diffs folded under each path, would-execute, failures and drift."""
    e = html.escape
    title = "disco plan of " + ", ".join(d["node"] for d in documents)
    body = [f"<h1>{e(title)}</h1>"]
    for d in documents:
        fails = head_failures(d)
        body.append(
            f'<h2>{e(d["node"])}</h2><p class="meta">root {e(d["root"])} &middot;'
            f" base {e(_side(d['base']))} &middot; head {e(_side(d['head']))}"
            f" &middot; {e(d['created'])}</p>"
        )
        body.append(
            '<ul class="totals">'
            f'<li class="{"bad" if d["delta"] else "ok"}"><b>{len(d["delta"])}</b>'
            " paths differ</li>"
            f'<li class="{"bad" if fails else "ok"}"><b>{len(fails)}</b>'
            " modules fail in head</li>"
            f"<li><b>{len(d['drift'])}</b> drift</li></ul>"
        )
        body.append("<h3>Delta</h3>")
        if not d["delta"]:
            body.append('<p class="none">head ends as base does</p>')
        for entry in d["delta"]:
            line = e(entry_line(entry))
            if entry.get("diff"):
                body.append(
                    f'<details><summary class="{e(entry["kind"])}">{line}</summary>'
                    f"<pre>{e(entry['diff'])}</pre></details>"
                )
            else:
                body.append(f'<p><code class="{e(entry["kind"])}">{line}</code></p>')
        would = [("head only", w) for w in d["would_execute"]["added"]]
        would += [("base only", w) for w in d["would_execute"]["removed"]]
        if would:
            body.append("<h3>Would execute</h3><ul>")
            body += [f"<li>{e(side)}: <code>{e(w)}</code></li>" for side, w in would]
            body.append("</ul>")
        if fails:
            body.append("<h3>Fails in head</h3><ul>")
            body += [f'<li class="removed">{e(m)}</li>' for m in fails]
            body.append("</ul>")
        if d["drift"]:
            body.append("<h3>Drift (base alone changes these)</h3>")
            for c in d["drift"]:
                head = e(f"{c['module']}: {c['step']}: {c.get('header', c['path'])}")
                if c.get("diff"):
                    body.append(
                        f"<details><summary>{head}</summary><pre>{e(c['diff'])}</pre></details>"
                    )
                else:
                    body.append(f"<p><code>{head}</code></p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}{PLAN_STYLE}</style></head><body>
{chr(10).join(body)}
</body></html>
"""
