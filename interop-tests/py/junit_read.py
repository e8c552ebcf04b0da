"""Reads a JUnit XML file with junitparser (a reader CI tools' plugins are built on) and
prints, as JSON, what it found: {"tests": n, "suites": {name: [{"classname", "name",
"time", "outcome", "message", "text"}]}}, outcome "passed", "failure", "error" or
"skipped". Fails (exit 1) on a file it cannot read."""

import json
import sys

from junitparser import Error, Failure, JUnitXml, Skipped


def outcome(case):
    for result in case.result:
        for kind, name in ((Failure, "failure"), (Error, "error"), (Skipped, "skipped")):
            if isinstance(result, kind):
                return name, result.message or "", result.text or ""
    return "passed", "", ""


def main() -> int:
    try:
        xml = JUnitXml.fromfile(sys.argv[1])
        suites = {}
        for suite in xml:
            cases = []
            for case in suite:
                kind, message, text = outcome(case)
                cases.append(
                    {
                        "classname": case.classname,
                        "name": case.name,
                        "time": case.time,
                        "outcome": kind,
                        "message": message,
                        "text": text,
                    }
                )
            suites[suite.name] = cases
        print(json.dumps({"tests": xml.tests, "suites": suites}))
    except Exception as error:  # junitparser's and lxml's errors alike
        print(f"not JUnit XML: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
