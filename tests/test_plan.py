"""`disco plan`: base and head NOOP-danced over the same root, the delta per path, drift,
would-execute and failures compared, the root left as it was (DESIGN §15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import Run
from plans import BASE, NODE, Spec, by_path, exact_state, make_server, plan, plan_json


def head_spec() -> Spec:
    """BASE with one change of each kind, a new Would-execute line and a failing module."""
    spec: Spec = json.loads(json.dumps(BASE))
    spec["alpha"]["files/etc/alpha.conf"] = "alpha 2\n"  # content
    spec["alpha"]["files/etc/alpha-new.conf"] = "new\n"  # added
    del spec["gamma"]["files/etc/gamma-gone"]  # removed
    spec["gamma"]["scripts/10-own"] = (
        "#!/bin/bash\nchown 1:1 /etc/gamma.conf\nchmod 600 /etc/gamma-mode\n"
        "ln -s gamma.conf /etc/gamma-typed\n"
    )  # owner, mode; type below
    spec["beta"]["scripts/10-log"] = (
        "#!/bin/bash\necho ran >> /etc/beta.log\nsystemctl reload beta\n"
    )
    spec["omega"] = {"scripts/10-fail": "#!/bin/bash\nexit 3\n"}
    return spec


def test_a_plan_shows_each_kind_of_delta_apart_from_drift(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    base_spec = json.loads(json.dumps(BASE))
    base_spec["gamma"]["files/etc/gamma-typed"] = "a file in base\n"
    base = make_server(tmp_path / "base", base_spec)
    head = make_server(tmp_path / "head", head_spec())
    (scratch_root / "etc/alpha.conf").write_text("alpha 0\n")
    before = exact_state(scratch_root)
    result = plan(cmd, state, scratch_root, base, head, "--json", "--detailed-exitcodes")
    assert exact_state(scratch_root) == before  # not even a ctime
    assert result.returncode == 6, result.stderr  # a delta, and head fails
    d = json.loads(result.stdout)
    assert d["format_version"] == 1 and d["node"] == NODE and d["root"] == str(scratch_root)
    assert len(d["base"]["hash"]) == len(d["head"]["hash"]) == 64
    assert d["base"]["hash"] != d["head"]["hash"]
    delta = by_path(d)
    assert delta["/etc/alpha.conf"]["kind"] == "changed"
    assert delta["/etc/alpha.conf"]["what"] == ["content"]
    assert delta["/etc/alpha.conf"]["summary"] == "-1 +1"
    assert "-alpha 1\n+alpha 2" in delta["/etc/alpha.conf"]["diff"]
    assert delta["/etc/alpha.conf"]["module"] == "alpha"
    assert delta["/etc/alpha.conf"]["step"] == "fetch"
    assert delta["/etc/alpha.conf"]["base"]["kind"] == "Modified"  # from the root's alpha 0
    assert delta["/etc/alpha-new.conf"]["kind"] == "added"
    assert delta["/etc/alpha-new.conf"]["base"] is None
    assert delta["/etc/gamma-gone"]["kind"] == "removed"
    assert delta["/etc/gamma-gone"]["head"] is None
    assert delta["/etc/gamma-gone"]["summary"] == "-1 +0"
    assert delta["/etc/gamma.conf"]["what"] == ["owner"]
    assert delta["/etc/gamma-mode"]["what"] == ["mode"]
    assert delta["/etc/gamma-typed"]["what"] == ["type"]
    assert delta["/etc/gamma-typed"]["step"] == "10-own"
    # What both trees do alike is no delta, and base's own changes are drift, apart.
    assert "/etc/beta.conf" not in delta and "/etc/beta.log" not in delta
    assert {c["path"] for c in d["drift"]} >= {"/etc/alpha.conf", "/etc/beta.log"}
    assert all(c["module"] in BASE for c in d["drift"])
    assert d["would_execute"] == {
        "added": ["beta: systemctl reload beta"],
        "removed": ["beta: systemctl restart beta"],
    }
    assert d["failed"] == {"base": [], "head": ["omega"]}
    assert d["exit"] == 6


def test_the_same_tree_plans_no_delta_and_exits_0(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    base = make_server(tmp_path / "base", BASE)
    head = make_server(tmp_path / "head", BASE)
    before = exact_state(scratch_root)
    result = plan(cmd, state, scratch_root, base, head, "--detailed-exitcodes")
    assert result.returncode == 0, result.stderr
    assert exact_state(scratch_root) == before
    assert "Plan: 0 path(s) differ" in result.stdout
    assert "3 of 3 module(s) danced once" in result.stdout
    assert "Drift (base alone would change it): alpha: fetch: /etc/alpha.conf" in result.stdout
    d = plan_json(cmd, state, scratch_root, base, head)
    assert d["delta"] == [] and d["exit"] == 0
    assert d["base"]["hash"] == d["head"]["hash"]


def test_modules_danced_once_give_the_plan_of_modules_danced_twice(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """A change to the last module: the modules before it are danced once, for both
    trees; the plan is the one of the same change where nothing is shared (a node
    parameter changed too, which every step can read)."""
    base = make_server(tmp_path / "base", BASE)
    spec = json.loads(json.dumps(BASE))
    spec["gamma"]["files/etc/gamma.conf"] = "gamma 2\n"
    head = make_server(tmp_path / "head", spec)
    shared = plan(cmd, state, scratch_root, base, head)
    assert "2 of 3 module(s) danced once" in shared.stdout, shared.stdout
    unshared_head = make_server(tmp_path / "head2", spec)
    params = unshared_head / "parameters" / NODE / "parameters"
    params.mkdir()
    (params / "unused").write_text("1\n")
    unshared = plan(cmd, state, scratch_root, base, unshared_head)
    assert "0 of 3 module(s) danced once" in unshared.stdout, unshared.stdout
    one = plan_json(cmd, state, scratch_root, base, head)
    two = plan_json(cmd, state, scratch_root, base, unshared_head)
    assert [e["path"] for e in one["delta"]] == ["/etc/gamma.conf"]
    for key in ("delta", "drift", "would_execute", "failed"):
        assert one[key] == two[key], key


def test_a_plan_on_the_real_root_leaves_it_as_it_was(
    cmd: Run, state: Path, tmp_path: Path, real_root_unchanged: None
) -> None:
    target = Path("/etc/disco-plan-test.conf")
    assert not target.exists()
    base = make_server(tmp_path / "base", {"m": {"files/etc/disco-plan-test.conf": "one\n"}})
    head = make_server(tmp_path / "head", {"m": {"files/etc/disco-plan-test.conf": "two\n"}})
    etc = os.lstat("/etc")
    d = plan_json(cmd, state, Path("/"), base, head)
    assert [e["path"] for e in d["delta"]] == [str(target)]
    assert d["delta"][0]["summary"] == "-1 +1"
    assert not target.exists()
    after = os.lstat("/etc")
    assert (after.st_mtime_ns, after.st_ctime_ns) == (etc.st_mtime_ns, etc.st_ctime_ns)
