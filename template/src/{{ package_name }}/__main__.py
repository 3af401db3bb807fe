"""Command line: `python -m <package> train | serve | monitor | promote | rollback | predict | export-onnx |
deploy | demo`."""

import sys

from ml_lifecycle import main

if __name__ == "__main__":
    sys.exit(main())
