"""A candidate's fleet plan as files for a CI job (DESIGN §15): a Markdown summary for a
pull request, a group of nodes a section (under GitHub's 65,536 characters: what it
leaves out, it says), and an HTML page. `content` False: no diff in them. (JUnit is the
nodes' own plans, rendered as `disco plan` does: cli/fleet_plan.py.)"""

from __future__ import annotations

import html

from disco.server.plans import FAILURES, FleetPlan, Group, entry_text

MARKDOWN_MAX = 60_000  # characters; a PR comment or job summary holds 65,536
FENCE = "````"  # a diff holding ``` stays inside


def title(g: Group) -> str:
    count = f"{len(g.nodes)} node{'s' if len(g.nodes) > 1 else ''}"
    if not g.delta and not g.failed:
        return f"no change on {count}"
    if len(g.delta) == 1 and not g.failed:
        return f"`{entry_text(g.delta[0])}` on {count}"
    fails = f", head fails in {', '.join(g.failed)}" if g.failed else ""
    return f"{len(g.delta)} path(s){fails} on {count}"


def markdown(plan: FleetPlan, content: bool) -> str:
    planned = sum(len(g.nodes) for g in plan.groups)
    head = [
        f"## disco plan of candidate `{plan.candidate}`",
        "",
        f"{planned} node(s) planned in {len(plan.groups)} group(s) ·"
        f" {len(plan.unplanned)} not yet planned · {len(plan.unaffected)} unaffected ·"
        f" exit {plan.exit}" + (" (head fails on a node)" if plan.exit & FAILURES else ""),
        "",
    ]
    tail = []
    if plan.unplanned:
        tail += ["### Not yet planned", ""]
        tail += [f"- `{n.node}`: {n.reason}" for n in plan.unplanned] + [""]
    if plan.unaffected:
        nodes = ", ".join(f"`{n.node}`" for n in plan.unaffected)
        tail += ["### Unaffected", "", f"{nodes}: {plan.unaffected[0].reason}", ""]
    if plan.problems:
        tail += ["### Problems", ""]
        tail += [f"- `{n.node}`: {n.reason}" for n in plan.problems] + [""]
    budget = MARKDOWN_MAX - len("\n".join(head + tail)) - 200
    body: list[str] = []
    left_out = 0
    for g in plan.groups:
        part = [f"### {title(g)}", "", ", ".join(f"`{n}`" for n in g.nodes), ""]
        part += [f"- `{entry_text(e)}`" for e in g.delta] + [""] if len(g.delta) > 1 else []
        for module in g.failed:
            part += [f"- head fails in module `{module}`"]
        for e in g.delta if content else ():
            if e.get("diff"):
                summary = f"<details><summary>{html.escape(e['path'])}</summary>"
                part += [summary, "", f"{FENCE}diff", e["diff"].rstrip("\n"), FENCE, ""]
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
