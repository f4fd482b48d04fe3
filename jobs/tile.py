"""Entry point for `ray job submit --working-dir . -- python jobs/tile.py --config ... [--set KEY=VALUE]`.

Same arguments as `srtn tile`; the logic lives in the srtn package (platform/srtn).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # importable from the working dir alone

from srtn.cli import main

if __name__ == "__main__":
    sys.exit(main(["tile", *sys.argv[1:]]))
