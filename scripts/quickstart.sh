#!/usr/bin/env bash
# The main job on a fresh machine, offline: set up, check the recipe, show what will be trained, fine-tune
# SmolLM2-135M-Instruct on the bundled task data (answers scored at every evaluation, the best kept), then score
# base and tuned model on the held-out rows and on a general-knowledge task (what the fine-tune forgot), answers
# side by side (about 5 minutes on a 2-core CPU once set up; setup adds 6 to 12).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_dir="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/sft validate configs/quickstart.yaml
.venv/bin/sft preview configs/quickstart.yaml --limit 2
.venv/bin/sft train configs/quickstart.yaml --set output.dir="$PWD/$run_dir"
# the held-out rows, and what the fine-tune kept of general knowledge (scripts/make_harness_task.py, lm-eval):
# through the run's template, then as raw task text (how base models are benchmarked)
.venv/bin/sft eval "$run_dir" --data data/tasks/eval.jsonl --tasks data/harness/general_knowledge.yaml --base \
  --max-new-tokens 24
.venv/bin/sft eval "$run_dir" --tasks data/harness/general_knowledge.yaml --base --prompt raw
echo "run folder: $run_dir   try: .venv/bin/sft generate $run_dir \"Reverse the letters of the word.\" --input planet"
