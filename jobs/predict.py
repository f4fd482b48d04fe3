"""Entry point for `ray job submit --working-dir . -- python jobs/predict.py --config ... [--set KEY=VALUE]`.

Same arguments as `srtn predict`: one slide (`--slide S --out O`) or a cohort
(`--set slides=s3://bucket/slides --set out_dir=s3://bucket/sr`, see configs/predict/cohort.yaml).
The logic lives in the srtn package (platform/srtn/infer).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # importable from the working dir alone

from srtn.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
