"""`sft smoke` on every bundled recipe, twice: with an empty tiny-model cache, then with the cache warm. Prints each
recipe's stage seconds and each run's wall time, start-up included (one `sft smoke` process per run).

Usage: python scripts/bench_smoke.py [RECIPE ...]   (default: configs/*.yaml)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(recipes: list[str], cache: str) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sft_cli", "smoke", *recipes, "--json"], capture_output=True,
                          text=True, env={**os.environ, "XDG_CACHE_HOME": cache})  # fmt: skip
    if done.returncode not in (0, 1):
        sys.exit(done.stderr[-3000:])
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    recipes = sys.argv[1:] or sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))
    cache = tempfile.mkdtemp(prefix="bench-smoke-")
    for label in ("cold cache", "warm cache"):
        wall, report = run(recipes, cache)
        print(f"{label}: {len(recipes)} recipes in {wall:.1f} s (one process, start-up included)")
        for result in report["results"]:
            stages = {s["name"]: s["seconds"] for s in result["stages"]}
            verdict = "passed" if result["passed"] else "FAILED"
            print(f"  {Path(result['recipe']).name:22} {verdict} {sum(stages.values()):5.1f} s  "
                  f"(tiny model {stages['tiny model']:.1f} s, train {stages['train']:.1f} s)")  # fmt: skip
    for recipe in recipes[:1]:
        wall, _ = run([recipe], cache)
        print(f"one recipe alone, warm cache, start-up included: {Path(recipe).name} {wall:.1f} s")


if __name__ == "__main__":
    main()
