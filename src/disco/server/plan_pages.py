"""A candidate's fleet plan as files for a CI job (DESIGN §15): a Markdown summary for a
pull request, a group of nodes a section (under GitHub's 65,536 characters: what it
leaves out, it says), and an HTML page. `content` False: no diff in them. (JUnit is the
nodes' own plans, rendered as `disco plan` does: cli/fleet_plan.py.)"""

from __future__ import annotations

import html
import re

from disco.server.plans import FAILURES, FleetPlan, Group, Node, entry_text

MARKDOWN_MAX = 60_000  # characters; a PR comment or job summary holds 65,536


NAMES = 30  # node names listed in one place; the others counted
LINES = 50  # reasons or problems listed; the others counted


def code(text: str) -> str:
    """`text` as inline code; what a node wrote cannot close it."""
    return "`" + text.replace("`", "'").replace("\n", " ") + "`"


def fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(4, longest + 1)


def listed(nodes: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(code(n) for n in nodes[:NAMES])
    return shown + (f" and {len(nodes) - NAMES} more" if len(nodes) > NAMES else "")


def title(g: Group) -> str:
    count = f"{len(g.nodes)} node{'s' if len(g.nodes) > 1 else ''}"
    if not g.delta and not g.failed:
        return f"no change on {count}"
    if len(g.delta) == 1 and not g.failed:
        return f"{code(entry_text(g.delta[0]))} on {count}"
    fails = f", head fails in {', '.join(code(m) for m in g.failed)}" if g.failed else ""
    return f"{len(g.delta)} path(s){fails} on {count}"


def by_reason(nodes: tuple[Node, ...]) -> list[str]:
    """`- reason: node, node and N more`, a line a reason."""
    reasons: dict[str, list[str]] = {}
    for n in nodes:
        reasons.setdefault(n.reason, []).append(n.node)
    lines = [f"- {reason}: {listed(these)}" for reason, these in list(reasons.items())[:LINES]]
    more = len(reasons) - LINES
    return lines + ([f"- and {more} more reason(s)"] if more > 0 else [])


def markdown(plan: FleetPlan, content: bool) -> str:
    planned = sum(len(g.nodes) for g in plan.groups)
    head = [
        f"## disco plan of candidate {code(plan.candidate)}",
        "",
        f"{planned} node(s) planned in {len(plan.groups)} group(s) ·"
        f" {len(plan.unplanned)} not yet planned · {len(plan.unaffected)} unaffected ·"
        f" exit {plan.exit}" + (" (head fails on a node)" if plan.exit & FAILURES else ""),
        "",
    ]
    tail = []
    if plan.unplanned:
        tail += ["### Not yet planned", "", *by_reason(plan.unplanned), ""]
    if plan.unaffected:
        tail += ["### Unaffected", "", *by_reason(plan.unaffected), ""]
    if plan.problems:
        problems = [f"- {code(n.node)}: {code(n.reason)}" for n in plan.problems]
        more = len(problems) - LINES
        tail += ["### Problems", "", *problems[:LINES]]
        tail += [f"- and {more} more", ""] if more > 0 else [""]
    budget = MARKDOWN_MAX - len("\n".join(head + tail)) - 200
    body: list[str] = []
    left_out = 0
    for g in plan.groups:
        part = [f"### {title(g)}", "", listed(g.nodes), ""]
        part += [f"- {code(entry_text(e))}" for e in g.delta] + [""] if len(g.delta) > 1 else []
        for e in g.delta if content else ():
            if e.get("diff"):
                summary = f"<details><summary>{html.escape(e['path'])}</summary>"
                fenced = fence(e["diff"])
                part += [summary, "", f"{fenced}diff", e["diff"].rstrip("\n"), fenced, ""]
                part += ["</details>", ""]
        text = "\n".join(part)
        if len(text) > budget:
            left_out += 1
            continue
        budget -= len(text) + 1
        body.append(text)
    if left_out:
        body.append(
            f"*{left_out} group(s) left out to stay under {MARKDOWN_MAX} characters:"
            f" `disco-server plan {plan.candidate}` shows them all.*\n"
        )
    return "\n".join(head + body + tail)


def html_page(plan: FleetPlan, content: bool) -> str:
    e = html.escape
    sections = []
    for g in plan.groups:
        rows = "".join(f"<li><code>{e(entry_text(x))}</code></li>" for x in g.delta)
        rows += "".join(f"<li class=bad>head fails in module {e(m)}</li>" for m in g.failed)
        diffs = "".join(
            f"<details><summary>{e(x['path'])}</summary><pre>{e(x['diff'])}</pre></details>"
            for x in (g.delta if content else ())
            if x.get("diff")
        )
        sections.append(
            f"<h2>{e(title(g).replace('`', ''))}</h2><p>{e(' '.join(g.nodes))}</p>"
            f"<ul>{rows}</ul>{diffs}"
        )
    lists = ""
    if plan.unplanned:
        items = "".join(f"<li>{e(n.node)}: {e(n.reason)}</li>" for n in plan.unplanned)
        lists += f"<h2>Not yet planned</h2><ul>{items}</ul>"
    if plan.unaffected:
        names = " ".join(n.node for n in plan.unaffected)
        lists += f"<h2>Unaffected</h2><p>{e(names)}: {e(plan.unaffected[0].reason)}</p>"
    if plan.problems:
        items = "".join(f"<li>{e(n.node)}: {e(n.reason)}</li>" for n in plan.problems)
        lists += f"<h2>Problems</h2><ul>{items}</ul>"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>disco plan {e(plan.candidate)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} pre {{ background: #f6f6f6; padding: 4px; }}
.bad {{ color: #a00; }}
</style></head><body>
<h1>disco plan of candidate {e(plan.candidate)}: exit {plan.exit}</h1>
{"".join(sections)}
{lists}
</body></html>
"""
