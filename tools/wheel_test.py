"""Runs the test suite against the installed fastxent wheel (cibuildwheel's test-command and
tools/build_wheel_check.sh). Usage: python tools/wheel_test.py PROJECT_DIR [pytest args]

Optional test dependencies are installed only where binary wheels exist (never built from
source); their tests skip otherwise. The suite runs from a temporary directory so the package
imported is the installed one, and `python -m fastxent --quick --no-peers` is run as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

OPTIONAL = ["ml_dtypes", "numba"]


def main() -> int:
    project = Path(sys.argv[1]).resolve()
    for name in OPTIONAL:
        got = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:", name])
        if got.returncode:
            print(f"wheel_test: no binary wheel of {name} here; its tests will skip")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        where = subprocess.run([sys.executable, "-c", "import fastxent; print(fastxent.__file__)"],
                               check=True, capture_output=True, text=True).stdout.strip()
        print(f"wheel_test: testing {where}")
        if Path(where).resolve().is_relative_to(project / "python"):
            print("wheel_test: fastxent imports from the source tree, not the installed wheel")
            return 1
        rc = subprocess.run([sys.executable, "-m", "pytest", str(project / "tests"), "-q",
                             "-p", "no:cacheprovider", *sys.argv[2:]]).returncode
        if rc:
            return rc
        return subprocess.run([sys.executable, "-m", "fastxent", "--quick", "--no-peers"]).returncode


if __name__ == "__main__":
    sys.exit(main())
