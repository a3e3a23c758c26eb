"""The server side (disco-server): `~/rsyncd.conf` serves `parameters/` and each module, as
in the seed; a node's key may only run `rsync --server --daemon` with a config of its own
(`rsyncd.d/NODE.conf`) whose daemon filter hides every node but NODE from `[parameters]`,
and whose write-only `[reports]` is `reports/NODE/` alone: where its dances' reports go.
The same config shows it the candidate trees (`[candidates]`, DESIGN §15) with every other
node's parameters hidden, and takes its plan of each into `plans/NAME/NODE.json` (`[plans]`,
write only)."""

from __future__ import annotations

import base64
import itertools
import os
import re
import shlex
import shutil
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from disco.errors import DiscoError, UsageError
from disco.files import write_atomic
from disco.tree.modules import Module, load_module
from disco.tree.names import check_name, check_node, is_hidden
from disco.tree.order import cycles

HEADER = "# disco-server"  # `# disco-server: DIR`, so that `sync` needs no DIR
NODE_HEADER = "# disco-server node"  # `# disco-server node: NODE` in a node's config
NOTE = "# Written by disco-server; 'disco-server sync' rewrites it, keeping each comment."
NODE_DIR = "rsyncd.d"
PARAMETERS = "parameters"
REPORTS = "reports"  # a node's write-only area, reports/NODE/, in its own config only
REPORT_FILE = "last.json"  # the one file a node may write there
CANDIDATES = "candidates"  # candidates/NAME/{parameters,modules}: trees under review
PLANS = "plans"  # plans/NAME/NODE.json: each node's plan of candidate NAME
NODE_AREAS = (REPORTS, CANDIDATES, PLANS)  # rsync modules of a node's config alone
# [global] holds an rsyncd.conf's global settings
RESERVED = (PARAMETERS, REPORTS, CANDIDATES, PLANS, "global")
KEY_TYPE = re.compile(r"(sk-)?(ssh|ecdsa-sha2)-[a-z0-9]+(@openssh\.com)?")
BASE64 = re.compile(r"([A-Za-z0-9+/]{4})+([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@dataclass(frozen=True)
class Problem:
    """One thing `check` found wrong: what, and what to do about it."""

    message: str
    hint: str


@dataclass(frozen=True)
class Config:
    """A daemon config as read back: its disco-server headers and its modules' settings."""

    path: Path
    root: Path | None
    node: str | None
    sections: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class NodeAdded:
    config: Path
    replaced: bool  # the key had a line already, now replaced
    has_parameters: bool  # parameters/NODE/ exists


def name_problem(name: str, what: str) -> Problem | None:
    """Why `name` cannot be a module or node name, or None if it can."""
    try:
        check_name(name, what)
    except UsageError as e:
        return Problem(e.message, e.hint)
    if what.startswith("module") and name.lower() in RESERVED:
        return Problem(f"{what} '{name}' is reserved", "rsyncd.conf uses it: rename the module")
    return None


def listing(where: Path, dirs: bool = True) -> list[str]:
    """The directories (or all entries) in `where`, sorted; hidden ones are not disco's
    (`..evil` is not hidden: names.is_hidden)."""
    found = where.iterdir() if where.is_dir() else ()
    return sorted(p.name for p in found if (p.is_dir() or not dirs) and not is_hidden(p.name))


def conf_path(path: Path) -> Path:
    if re.search(r"[\n%\\\"]", str(path)) or str(path) != str(path).strip():
        raise DiscoError(f"rsyncd.conf cannot name {path!r}", "move it to a plainer path")
    return path


def locate(root: Path | None, config: Path) -> Path:
    """The server directory: `root`, else the one `config` was written for."""
    if root is None:
        root = getattr(read_config(config), "root", None)
        if root is None:
            hint = (
                f"give it: '{command('sync', 'DIR', config)}'"
                f" (or '{command('init', 'DIR', config)}' for a new one)"
            )
            raise DiscoError(f"no server directory given, and {config} names none", hint)
    root = conf_path(Path(os.path.abspath(root)))
    for part in (PARAMETERS, "modules"):
        if not (root / part).is_dir():
            hint = f"run '{command('init', root, config)}'"
            raise DiscoError(f"{root} is not a disco server: it has no {part}/", hint)
    return root


def command(verb: str, root: Path | str, config: Path) -> str:
    """The disco-server command line that does `verb` for `root`, with the `--config`
    given (none for the default, ~/rsyncd.conf)."""
    line = f"disco-server {verb} {shlex.quote(str(root))}"
    if os.path.abspath(config) != os.path.abspath(Path.home() / "rsyncd.conf"):
        line += f" --config {shlex.quote(str(config))}"
    return line


def read_config(path: Path) -> Config | None:
    """Parse a daemon config (None if it does not exist); keys as rsync sees them."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DiscoError(f"cannot read {path}: {e.strerror}", "check its permissions") from None
    heads: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}  # settings before the first [module] are global: dropped
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith((HEADER + ": ", NODE_HEADER + ": ")):
            heads[raw.partition(": ")[0]] = raw.partition(": ")[2]
        elif line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current["".join(key.split()).lower()] = value.strip()
    root = heads.get(HEADER)
    return Config(path, Path(root) if root else None, heads.get(NODE_HEADER), sections)


def comment_for(name: str, old: Config | None) -> str:
    """The comment an admin gave the module, else the seed's style: `v3.2 of othermodule`."""
    if old is not None and old.sections.get(name, {}).get("comment"):
        return old.sections[name]["comment"]
    if name == PARAMETERS:
        return "DISCO Parameters"
    versioned = re.fullmatch(r"(.+)-(\d[A-Za-z0-9._]*)", name)
    return f"v{versioned[2]} of {versioned[1]}" if versioned else f"disco module {name}"


def section(name: str, path: Path, comment: str, only: str = "") -> str:
    """One rsync module, in the seed's layout; `only`: daemon filter rules."""
    lines = [f"[{name}]", f"path = {path}", "read only = true", f"comment = {comment}"]
    lines += ["list = yes", "use chroot = false"] + ([f"filter = {only}"] if only else [])
    return "\n".join(lines) + "\n"


def reports_section(root: Path, node: str) -> str:
    """`[reports]` for one node: it may upload last.json into reports/NODE/ and nothing
    else; it can neither download (write only), delete, nor plant a working symlink."""
    lines = [
        f"[{REPORTS}]",
        f"path = {root / REPORTS / node}",
        "read only = false",
        "write only = true",
        f"comment = dance reports of {node}",
        "list = no",
        "use chroot = false",
        "munge symlinks = yes",  # and links refused: belt and braces
        f"filter = + /{REPORT_FILE} - *",
        "refuse options = delete* remove-source-files links",
        "incoming chmod = D750,F640",
    ]
    return "\n".join(lines) + "\n"


def candidates_filter(node: str) -> str:
    """What a node sees of candidates/: every candidate's modules, its own parameters."""
    return f"+ /*/{PARAMETERS}/{node}/*** - /*/{PARAMETERS}/**"


def plans_filter(node: str) -> str:
    """What a node may write in plans/: NAME/NODE.json, in a NAME/ that propose made."""
    return f"+ /*/{node}.json - *"


def candidates_section(root: Path, node: str) -> str:
    """`[candidates]` for one node: the proposed trees, read only, its own parameters only.
    Their symlinks are kept munged on disk (propose): no path through one leads the daemon
    to another node's parameters, and nodes get them back as they were."""
    text = section(CANDIDATES, root / CANDIDATES, "candidate trees under review",
                   candidates_filter(node)).replace("list = yes", "list = no")  # fmt: skip
    return (
        text + "munge symlinks = yes\nrefuse options = copy-links copy-dirlinks copy-unsafe-links\n"
    )


def plans_section(root: Path, node: str) -> str:
    """`[plans]` for one node: it may upload NODE.json into plans/NAME/ of an open
    candidate (the directory must exist: it cannot make one), nothing else."""
    return (
        reports_section(root, node)
        .replace(f"[{REPORTS}]", f"[{PLANS}]")
        .replace(f"path = {root / REPORTS / node}", f"path = {root / PLANS}")
        .replace(f"comment = dance reports of {node}", f"comment = candidate plans of {node}")
        .replace(f"filter = + /{REPORT_FILE} - *", f"filter = {plans_filter(node)}")
    )


def render(root: Path, old: Config | None, node: str | None = None) -> str:
    """A daemon config: `[parameters]` (for a node, only its own), then each module."""
    names = listing(root / "modules")
    bad = [p for p in (name_problem(n, "module name") for n in names) if p]
    if bad:
        what = ", ".join(p.message for p in bad)
        raise DiscoError(f"cannot serve {root}/modules: {what}", "rename them: " + bad[0].hint)
    only = f"+ /{node}/*** - *" if node else ""
    items = [section(PARAMETERS, root / PARAMETERS, comment_for(PARAMETERS, old), only)]
    if node:
        items += [f(root, node) for f in (reports_section, candidates_section, plans_section)]
    items += [section(n, root / "modules" / n, comment_for(n, old)) for n in names]
    head = f"{HEADER}: {root}\n" + (f"{NODE_HEADER}: {node}\n" if node else "") + NOTE + "\n"
    return "\n".join([head, *items])


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `path` beside it and rename it into place, making its directory if need be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode(), mode)
    except OSError as e:
        raise DiscoError(f"cannot write {path}: {e.strerror}", "check where it goes") from None


def node_configs(config: Path) -> dict[str, Config]:
    """The per-node configs beside `config` that disco-server wrote, by node."""
    found = {p.stem: read_config(p) for p in sorted((config.parent / NODE_DIR).glob("*.conf"))}
    return {node: c for node, c in found.items() if c is not None and c.node == node}


def sync(root: Path | None, config: Path, create: bool = False) -> list[Path]:
    """(Re)write `config` and each node's config beside it; `create`: lay out `root` first."""
    config = Path(os.path.abspath(config))
    try:
        for top in [root / PARAMETERS, root / "modules"] if create and root else []:
            top.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiscoError(f"cannot create {e.filename}: {e.strerror}", "check DIR") from None
    root = locate(root, config)
    old = read_config(config)
    write(config, render(root, old))
    for node, parsed in node_configs(config).items():
        make_node_dirs(root, node)
        write(parsed.path, render(root, old, node))
    return [config, *(parsed.path for parsed in node_configs(config).values())]


def make_node_dirs(root: Path, node: str) -> None:
    """reports/NODE/, which the node's rsync daemon writes into, and candidates/ and
    plans/, which it serves (they must exist)."""
    try:
        for where in (REPORTS, f"{REPORTS}/{node}", CANDIDATES, PLANS):
            (root / where).mkdir(mode=0o750, exist_ok=True)
    except OSError as e:
        raise DiscoError(f"cannot create {e.filename}: {e.strerror}", "check the server") from None


def balls() -> Path:
    """The standard library of balls shipped with disco."""
    return Path(str(resources.files("disco").joinpath("balls")))


def add_balls(root: Path) -> list[str]:
    """Copy each standard ball into `root`/modules/ that is not there yet; the names added.
    A module of the same name is the administrator's: it is kept as it is."""
    added = []
    for name in listing(balls()):
        target = root / "modules" / name
        if target.exists():
            continue
        try:
            shutil.copytree(balls() / name, target, symlinks=True)
        except OSError as e:
            raise DiscoError(f"cannot copy ball {name} to {target}: {e}", "check DIR") from None
        added.append(name)
    return added


def read_public_key(path: Path) -> tuple[str, str, str]:
    """The type, blob and comment of the OpenSSH public key line in `path` (never echoed)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read key file {path}: {e.strerror}", "give a .pub file") from None
    if "PRIVATE KEY" in text:
        raise UsageError(f"{path} is a private key", f"give the public key ({path}.pub)")
    lines = [line for line in text.splitlines() if line.strip()]
    words = lines[0].split() if len(lines) == 1 else []
    if len(words) >= 2 and KEY_TYPE.fullmatch(words[0]) and BASE64.fullmatch(words[1]):
        blob = base64.b64decode(words[1])  # the blob starts with the key type, again
        if blob[4 : 4 + int.from_bytes(blob[:4], "big")] == words[0].encode():
            return words[0], words[1], " ".join(words[2:])
    raise UsageError(
        f"{path} is not one OpenSSH public key line (ssh-ed25519 AAAA... comment)",
        "give the .pub file ssh-keygen wrote, without options before the key",
    )


def install_key(path: Path, line: str, blob: str) -> bool:
    """Put `line` in authorized_keys `path` instead of the key's line(s); True if replaced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # ~/.ssh, if missing
    old = path.read_text().splitlines() if path.exists() else []
    mine = [i for i, o in enumerate(old) if not o.startswith("#") and blob in o.split()]
    lines = [o for i, o in enumerate(old) if i not in mine]
    lines.insert(mine[0] if mine else len(lines), line)
    write(path, "\n".join(lines) + "\n", 0o600)
    return bool(mine)


def add_node(node: str, key_file: Path, config: Path, authorized_keys: Path) -> NodeAdded:
    """Let `node`'s key fetch its own parameters and the modules, read-only, nothing else."""
    check_node(node)
    kind, blob, comment = read_public_key(key_file)
    config = Path(os.path.abspath(config))
    root = locate(None, config)
    conf = conf_path(config.parent / NODE_DIR / f"{node}.conf")
    make_node_dirs(root, node)
    write(conf, render(root, read_config(config), node))
    forced = f"rsync --server --daemon --config={shlex.quote(str(conf))} ."
    line = f'command="{forced}",restrict {kind} {blob} {comment or node}'
    replaced = install_key(authorized_keys, line, blob)
    return NodeAdded(conf, replaced, (root / PARAMETERS / node).is_dir())


def config_problems(cfg: Config, root: Path, names: list[str], config: Path) -> list[Problem]:
    """How a daemon config (the main one `config`, or a node's beside it) differs from
    what `sync` would write for the tree."""
    hint, path = f"run '{command('sync', root, config)}'", cfg.path
    if cfg.root != root:
        what = f"{path} serves {cfg.root}, not {root}" if cfg.root else f"no rsync config at {path}"
        return [Problem(what, hint)]
    found = []
    for name in (n for n in names if n not in cfg.sections):
        found.append(Problem(f"module '{name}' has no rsync entry in {path} (stale)", hint))
    if cfg.node and cfg.sections.get(REPORTS, {}).get("path") != str(root / REPORTS / cfg.node):
        found.append(Problem(f"{path} gives node '{cfg.node}' no reports/{cfg.node}/", hint))
    if cfg.node:
        found += area_problems(cfg, root, cfg.node, hint)
    for name, settings in cfg.sections.items():
        if name in NODE_AREAS and cfg.node:
            continue
        if name != PARAMETERS and name not in names:
            found.append(Problem(f"rsync entry [{name}] in {path} has no module (stale)", hint))
        elif settings.get("path") != str(root / ("modules/" + name if name in names else name)):
            found.append(Problem(f"rsync entry [{name}] in {path} serves another path", hint))
    only = f"+ /{cfg.node}/*** - *"
    if cfg.node and cfg.sections.get(PARAMETERS, {}).get("filter") != only:
        found.append(Problem(f"{path} does not confine node '{cfg.node}'", hint))
    return found


def area_problems(cfg: Config, root: Path, node: str, hint: str) -> list[Problem]:
    """What a node's config lacks of [candidates] and [plans] (one written before them)."""
    found = []
    for name, filtered in ((CANDIDATES, candidates_filter(node)), (PLANS, plans_filter(node))):
        area = cfg.sections.get(name, {})
        if area.get("path") != str(root / name) or area.get("filter") != filtered:
            found.append(Problem(f"{cfg.path} gives node '{node}' no [{name}] of its own", hint))
    return found


def missing(node: str, wanted: list[str], modules: Mapping[str, Module]) -> list[Problem]:
    """The modules `node`'s dance needs that the server lacks, each with who requires it."""
    via: dict[str, tuple[str, ...]] = {name: (f"node '{node}'",) for name in wanted}
    queue, found = deque(wanted), []
    while queue:
        name = queue.popleft()
        if name not in modules:
            what = f"module '{name}' is missing ({' -> '.join((*via[name], name))})"
            found.append(Problem(what, f"add modules/{name}, or remove it where it is required"))
            continue
        for req in modules[name].requires:
            if req.name not in via:
                via[req.name] = (*via[name], name)
                queue.append(req.name)
    return found


def check(root: Path | None, config: Path) -> list[Problem]:
    """Everything wrong with the server tree and its daemon configs, as data."""
    config = Path(os.path.abspath(config))
    root = locate(root, config)
    found, modules = module_problems(root)
    main = read_config(config) or Config(config, None, None, {})
    for cfg in [main, *node_configs(config).values()]:
        found += config_problems(cfg, root, sorted(modules), config)
        if (n := cfg.node) and not (root / PARAMETERS / n).is_dir():
            hint = "create it, or remove the node's key from authorized_keys"
            found.append(Problem(f"node '{n}' has a key but no parameters/{n}/", hint))
    return found + node_problems(root, modules)


def tree_problems(root: Path) -> list[Problem]:
    """What is wrong with a server tree (names, modules, requires), configs aside."""
    found, modules = module_problems(root)
    return found + node_problems(root, modules)


def module_problems(root: Path) -> tuple[list[Problem], dict[str, Module]]:
    """What is wrong with the modules of a server tree, and the modules."""
    names = listing(root / "modules")
    found = [p for p in (name_problem(n, "module name") for n in names) if p]
    modules: dict[str, Module] = {}
    for name in (n for n in names if not name_problem(n, "module name")):
        try:
            modules[name] = load_module(root / "modules" / name, name)
        except DiscoError as e:
            found.append(Problem(e.message, e.hint))
            modules[name] = Module(name, root / "modules" / name, ())
    return found, modules


def node_problems(root: Path, modules: dict[str, Module]) -> list[Problem]:
    """What is wrong with the nodes of a server tree, and the requires between modules."""
    found: list[Problem] = []
    for node in listing(root / PARAMETERS):
        bad = name_problem(node, "node name")
        wanted = [] if bad else listing(root / PARAMETERS / node / "modules", dirs=False)
        found += [bad] if bad else []
        found += [p for p in (name_problem(w, f"node '{node}': module name") for w in wanted) if p]
        found += missing(node, [w for w in wanted if not name_problem(w, "name")], modules)
    known = {
        n: Module(n, m.path, tuple(r for r in m.requires if r.name in modules))
        for n, m in modules.items()
    }
    circuits = sorted(itertools.islice(cycles(known), CYCLES_SHOWN + 1))
    for cycle in circuits[:CYCLES_SHOWN]:  # all of them: one round of fixes, not one each
        what = "requires cycle: " + " -> ".join([*cycle, cycle[0]])
        found.append(Problem(what, "break it by removing one of these requirements"))
    if len(circuits) > CYCLES_SHOWN:
        found.append(Problem(f"more requires cycles than these {CYCLES_SHOWN}",
                             "break these, then check again"))  # fmt: skip
    return found


CYCLES_SHOWN = 20  # a tangle of modules has more cycles than anyone reads
