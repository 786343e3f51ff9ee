"""Runs the Eclipse Paho interoperability client tests against one broker,
each test in its own process with a time limit, and prints a JSON object
{"suite": ..., "results": {test: "pass" | "fail" | "timeout"}}.

Usage: run_suite.py INTEROP_DIR {client_test|client_test5} HOST PORT [TIMEOUT_S [TEST...]]

With TEST names, only those run.

INTEROP_DIR is a writable copy of paho's `interoperability/` folder (Python
writes `__pycache__` there). The topics are the suite's defaults; the
`test/nosubscribe` refusal needs broker configuration, so that test is
reported like every other and compared alike for every broker.
"""

import json
import subprocess
import sys

ONE = r"""
import sys, unittest
sys.path.insert(0, {dir!r})
sys.argv = [{mod!r} + ".py"]
import {mod} as t
t.host, t.port = {host!r}, {port}
t.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
t.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
t.nosubscribe_topics = ("test/nosubscribe",)
suite = unittest.defaultTestLoader.loadTestsFromName({name!r}, t)
r = unittest.TextTestRunner(verbosity=0).run(suite)
sys.exit(0 if r.wasSuccessful() else 1)
"""

LIST = r"""
import sys, unittest
sys.path.insert(0, {dir!r})
sys.argv = [{mod!r} + ".py"]
import {mod} as t
names = unittest.defaultTestLoader.getTestCaseNames(t.Test)
print("\n".join(names))
"""


def main():
    interop, mod, host, port = sys.argv[1:5]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    names = sys.argv[6:] or subprocess.run(
        [sys.executable, "-c", LIST.format(dir=interop, mod=mod)],
        capture_output=True, text=True, check=True, cwd=interop,
    ).stdout.split()
    results = {}
    for name in names:
        code = ONE.format(dir=interop, mod=mod, host=host, port=int(port), name="Test." + name)
        try:
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True,
                timeout=timeout, cwd=interop,
            )
            results[name] = "pass" if done.returncode == 0 else "fail"
        except subprocess.TimeoutExpired:
            results[name] = "timeout"
    print(json.dumps({"suite": mod, "results": results}))


if __name__ == "__main__":
    main()
