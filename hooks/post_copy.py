"""After `copier copy`: lock the new project's dependencies, so its first commit has a uv.lock.

Runs in the new project's folder. Without uv on PATH it says how to lock later instead of failing the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def main() -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("uv not found: run `uv lock` in the project to pin its dependencies", file=sys.stderr)
        return 0
    result = subprocess.run([uv, "lock", "--quiet"], check=False)
    if result.returncode != 0:
        print("`uv lock` failed; fix the error above and run `uv lock` again in the project", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
