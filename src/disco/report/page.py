"""`disco report --html`: the last dance as one self-contained page (DESIGN §9).

Totals first (what an administrator asks first: did it work, what changed, how long),
then a timeline of the steps on a real time axis — each bar starts where the step started
and is as long as it ran, failed steps in red — then the change records of each step with
their diffs folded under them. No script, no external resource: it opens from a mail or
a file server as it is.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from disco.report.metrics import DanceReport, Record, select

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.5em 0 .5em; }
.meta { color: #555; }
.totals { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; padding: 0; }
.totals li { list-style: none; border: 1px solid #ccc; border-radius: 6px; padding: .4em .9em; }
.totals b { display: block; font-size: 1.4em; }
.ok b { color: #2a7d2a; } .bad b { color: #b00; }
.timeline { position: relative; margin-left: 22em; }
.axis { position: relative; height: 1.6em; border-bottom: 1px solid #999; }
.tick { position: absolute; bottom: 0; height: .5em; border-left: 1px solid #999; }
.tick span { position: absolute; bottom: .6em; left: -2em; width: 4em; text-align: center;
  font-size: .8em; color: #555; }
.row { position: relative; height: 1.35em; border-bottom: 1px solid #eee; }
.row .label { position: absolute; right: 100%; width: 21.5em; padding-right: .5em;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; text-align: right; }
.bar { position: absolute; top: .2em; height: .95em; min-width: 2px; background: #4a90d9;
  border-radius: 2px; }
.row.failed .bar { background: #d9534f; } .row.failed .label { color: #b00; font-weight: bold; }
.step { margin: .6em 0; } .step > h3 { font-size: 1em; margin: .8em 0 .3em; }
details { margin: .15em 0 .15em 1em; } summary { cursor: pointer; font-family: monospace; }
summary.created { color: #2a7d2a; } summary.deleted { color: #b00; }
summary.failed { color: #b00; font-weight: bold; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .5em; overflow-x: auto;
  margin: .3em 0 .6em; }
.none { color: #777; }
"""


def report_html(report: DanceReport, module: str | None = None) -> str:
    chosen = select(report, module)
    e = html.escape
    title = e(f"disco dance on {chosen.node} at {chosen.started}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p class="meta">mode {e(chosen.mode)} &middot; root {e(chosen.root)} &middot;
{e(chosen.node)}</p>
{totals(chosen)}
<h2>Timeline</h2>
{timeline(chosen.records)}
<h2>Changes</h2>
{changes(chosen)}
<h2>Would execute</h2>
{would_execute(chosen)}
</body></html>
"""


def would_execute(report: DanceReport) -> str:
    """The commands NOOP intercepted: what a live dance would have run outside."""
    if not report.would_execute:
        return '<p class="none">nothing intercepted</p>'
    e = html.escape
    items = "".join(
        f"<li><code>{e(w.get('command', ''))}</code> <span class=meta>({e(w.get('module', '?'))})"
        "</span></li>"
        for w in report.would_execute
    )
    return f'<ul class="would">{items}</ul>'


def totals(report: DanceReport) -> str:
    records = report.records
    failed = [r for r in records if r.exit != 0]
    modules = {r.module for r in records if r.module != "_internal"}
    elapsed = max((r.start + r.wall for r in placed(records)), default=0.0)
    cpu = sum(r.usage.utime + r.usage.stime for r in records)
    uncommitted = sum(1 for c in report.changes if "failed" in c)
    status = f"{report.exit} ({report.exit_meaning()})"
    cells = [
        ("bad" if report.failed() else "ok", "exit", status),
        ("", "modules", str(len(modules))),
        ("", "steps", str(len(records))),
        ("bad" if failed else "ok", "failed steps", str(len(failed))),
        ("", "changes", str(len(report.changes) - uncommitted)),
        *([("bad", "not committed", str(uncommitted))] if uncommitted else []),
        ("", "would execute", str(len(report.would_execute))),
        ("", "wall time", f"{elapsed:.2f} s"),
        ("", "CPU time", f"{cpu:.2f} s"),
    ]
    items = "".join(
        f'<li class="{kind}"><b>{html.escape(value)}</b>{html.escape(name)}</li>'
        for kind, name, value in cells
    )
    return f'<ul class="totals">{items}</ul>'


def placed(records: Iterable[Record]) -> list[Record]:
    """The records with their start times; a report written before starts were kept has
    none: its steps are laid end to end, in the order they ran."""
    records = list(records)
    if any(r.start for r in records):
        return records
    out, at = [], 0.0
    for r in records:
        out.append(Record(r.module, r.step, r.item, r.wall, r.usage, r.exit, at))
        at += r.wall
    return out


def timeline(records: tuple[Record, ...]) -> str:
    if not records:
        return '<p class="none">no steps recorded</p>'
    rows = placed(records)
    end = max(r.start + r.wall for r in rows) or 1.0
    step = nice_step(end)
    ticks = []
    t = 0.0
    while t <= end * 1.0001:
        ticks.append(
            f'<div class="tick" style="left:{100 * t / end:.3f}%"><span>{t:g} s</span></div>'
        )
        t = round(t + step, 6)
    lines = []
    for r in rows:
        name = f"{r.module}: {r.step}" + (f" {r.item}" if r.item else "")
        tip = f"{name}: started at {r.start:.3f} s, ran {r.wall:.3f} s, exit {r.exit}"
        status = "failed" if r.exit != 0 else "ok"
        lines.append(
            f'<div class="row {status}" title="{html.escape(tip)}">'
            f'<span class="label">{html.escape(name)}</span>'
            f'<div class="bar" style="left:{100 * r.start / end:.3f}%;'
            f'width:{100 * r.wall / end:.3f}%"></div></div>'
        )
    return f'<div class="timeline"><div class="axis">{"".join(ticks)}</div>{"".join(lines)}</div>'


def nice_step(end: float) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving 4 to 10 ticks."""
    scale = 1e-3
    while True:
        for factor in (1, 2, 5):
            if end / (factor * scale) <= 10:
                return factor * scale
        scale *= 10


def changes(report: DanceReport) -> str:
    if not report.changes:
        return '<p class="none">no changes</p>'
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for change in report.changes:
        key = (change.get("module", "?"), change.get("step", "?"))
        groups.setdefault(key, []).append(change)
    e = html.escape
    out = []
    for (module, step), items in groups.items():
        out.append(f'<div class="step"><h3>{e(module)}: {e(step)}</h3>')
        for change in items:
            kind = e(change.get("kind", "").lower())
            head = e(change.get("header", change.get("path", "")))
            diff = change.get("diff", "")
            body = f"<pre>{e(diff)}</pre>" if diff else '<p class="none">no content diff</p>'
            if "failed" in change:  # its commit failed: the root was left as it was
                kind, head = "failed", f"{e(change['failed'])}: {head}"
            out.append(f'<details><summary class="{kind}">{head}</summary>{body}</details>')
        out.append("</div>")
    return "\n".join(out)
