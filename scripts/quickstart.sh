#!/usr/bin/env bash
# The main job on a fresh machine: set up, then show what SmolLM2-135M would be trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sft validate configs/alpaca.yaml
.venv/bin/sft preview configs/alpaca.yaml --limit 2
