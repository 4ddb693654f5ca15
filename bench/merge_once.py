"""One merge in its own process, for the quality benchmarks: run_merge, then its metrics as JSON.

Run by bench/text_bench.py under bench/measure.py's launcher, so each merge's wall time and peak
RSS are its own. Usage: merge_once.py CONFIG.json OUT_DIR METRICS.json [ANCHOR_CACHE]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from fda_core.config import parse_config
    from fda_core.merge.run import MergeOptions, run_merge

    config_file, out, metrics_file = (Path(a) for a in sys.argv[1:4])
    cache = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    config = parse_config(json.loads(config_file.read_text()), where=str(config_file))
    result = run_merge(config, out, MergeOptions(overwrite=True, anchor_cache=cache))
    metrics_file.write_text(json.dumps({"seconds": result.seconds, "metrics": result.metrics}))


if __name__ == "__main__":
    main()
