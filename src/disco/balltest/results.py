"""Results of ball tests and lint checks, and their JSON and JUnit forms (DESIGN §16)."""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class Status(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Check:
    """One testcase: `suite` (a ball, or `lint`), `group` (a scenario, or what lint checked),
    `name` (the check), its status, a one-line message and the details behind it."""

    suite: str
    group: str
    name: str
    status: Status
    message: str = ""
    details: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "group": self.group,
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "details": self.details,
            "seconds": round(self.seconds, 3),
        }


def passed(checks: Sequence[Check]) -> bool:
    return all(c.status is not Status.FAILED for c in checks)


def counts(checks: Sequence[Check]) -> dict[str, int]:
    return {s.value: sum(1 for c in checks if c.status is s) for s in Status}


def document(kind: str, checks: Sequence[Check], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "command": kind,
        "passed": passed(checks),
        "counts": counts(checks),
        **extra,
        "checks": [c.as_json() for c in checks],
    }


def junit(checks: Sequence[Check], properties: dict[str, str]) -> bytes:
    """A testsuite per suite (ball), a testcase per check, classname `suite.group`."""
    top = ET.Element("testsuites")
    suites: dict[str, ET.Element] = {}
    for check in checks:
        suite = suites.get(check.suite)
        if suite is None:
            suite = suites[check.suite] = ET.SubElement(top, "testsuite", name=check.suite)
            props = ET.SubElement(suite, "properties")
            for key, value in properties.items():
                ET.SubElement(props, "property", name=key, value=value)
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{check.suite}.{check.group}",
            name=check.name,
            time=f"{check.seconds:.3f}",
        )
        if check.status is Status.FAILED:
            failure = ET.SubElement(case, "failure", message=xml_text(check.message))
            failure.text = xml_text(check.details)
        elif check.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=xml_text(check.message))
        elif check.details:
            ET.SubElement(case, "system-out").text = xml_text(check.details)
    for name, suite in suites.items():
        mine = [c for c in checks if c.suite == name]
        n = counts(mine)
        suite.set("tests", str(len(mine)))
        suite.set("failures", str(n["failed"]))
        suite.set("skipped", str(n["skipped"]))
        suite.set("errors", "0")
        suite.set("time", f"{sum(c.seconds for c in mine):.3f}")
    ET.indent(top)
    text: bytes = ET.tostring(top, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def xml_text(text: str) -> str:
    """What XML 1.0 can hold: a binary diff's control bytes shown as `?`."""
    return NOT_XML.sub("?", text)
