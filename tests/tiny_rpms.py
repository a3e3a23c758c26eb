"""Tiny rpms built at test time with rpmbuild, in a repository made by createrepo_c
(no network), for packages_env.dance to serve on loopback (issue 25: `dnf install`).

- disco-hello 1.0: a file, a %config(noreplace) file under /etc, a %post that adds the
  system user disco-hello and writes /var/lib/disco-hello.log; it requires
- disco-lib 2.0: a file (a dependency dnf resolves and fetches too);
- disco-base: provides /bin/sh, which the Debian root has but no rpm owns; DNF_SETUP
  records it in the root's new rpmdb.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from packages_env import PORT

_SPECS = {
    "disco-hello": """Version: 1.0
Release: 1
Requires: disco-lib
%description
disco's dnf test package.
%install
mkdir -p %{buildroot}/usr/share/disco-hello %{buildroot}/etc/disco-hello
echo hello > %{buildroot}/usr/share/disco-hello/hello.txt
echo "greeting = hello" > %{buildroot}/etc/disco-hello/hello.conf
%post
getent passwd disco-hello >/dev/null || useradd --system --no-create-home disco-hello
echo "installed $1" >> /var/lib/disco-hello.log
%files
/usr/share/disco-hello/hello.txt
%config(noreplace) /etc/disco-hello/hello.conf
""",
    "disco-lib": """Version: 2.0
Release: 1
%description
A dependency.
%install
mkdir -p %{buildroot}/usr/lib/disco-lib
echo lib > %{buildroot}/usr/lib/disco-lib/lib.txt
%files
/usr/lib/disco-lib/lib.txt
""",
    "disco-base": """Version: 1.0
Release: 1
Provides: /bin/sh
%description
The root's shell, for rpm.
%files
""",
}

# The scratch root before the dance: an rpmdb (where its rpm macros say), disco-base
# in it, and the one repository, on loopback.
DNF_SETUP = f"""set -e
mkdir -p /etc/yum.repos.d /etc/rpm /var/lib/rpm
echo '%_dbpath /var/lib/rpm' >/etc/rpm/macros
printf '[disco]\\nname=disco tests\\nbaseurl=http://127.0.0.1:{PORT}/\\ngpgcheck=0\\n' \\
    >/etc/yum.repos.d/disco.repo
rpm --initdb
python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \\
    http://127.0.0.1:{PORT}/disco-base-1.0-1.noarch.rpm /tmp/disco-base.rpm
rpm -i --justdb /tmp/disco-base.rpm
rm /tmp/disco-base.rpm
"""


def available() -> str | None:
    """Why the tiny rpms cannot be built and installed here, or None."""
    for tool in ("rpmbuild", "createrepo_c", "dnf", "rpm"):
        if shutil.which(tool) is None:
            return f"no {tool}: install dnf, rpm and createrepo-c (make test-deps)"
    return None


def make_repo(where: Path) -> Path:
    """The rpms, built, and their repository's metadata."""
    top = where / "rpmbuild"
    repo = where / "repo"
    repo.mkdir(parents=True)
    for name, body in _SPECS.items():
        spec = where / f"{name}.spec"
        spec.write_text(
            f"Name: {name}\nSummary: disco test\nLicense: MIT\nBuildArch: noarch\n{body}"
        )
        subprocess.run(
            ["rpmbuild", "--define", f"_topdir {top}", "--define", "_buildhost disco", "-bb",
             str(spec)],
            check=True, capture_output=True,
        )  # fmt: skip
    for rpm in (top / "RPMS" / "noarch").glob("*.rpm"):
        shutil.copy(rpm, repo)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True, capture_output=True)
    return repo
