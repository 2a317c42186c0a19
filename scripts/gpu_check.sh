#!/usr/bin/env bash
# What CI's CPU cannot show, checked on a CUDA machine in one command, ending in one table (docs/training.md,
# "Training on GPUs"). Meant to finish within 8 minutes on one H100:
#   cuda-tests   the tests with CUDA branches (attention kernels keep sequences apart, forecasts, environment)
#   attention    sft's per-sequence kernel against FlexAttention (document mask), forward and backward: which
#                kernel packed batches should use on CUDA without flash-attn (scripts/bench_attention.py)
#   environment  the decision `sft train --dry-run` prints here (precision, weights, attention, loss)
#   throughput   a Qwen2.5-0.5B-shaped model (random weights, built here: no hub), bf16, packed rows: sft against
#                plain TRL with its defaults, in one invocation of scripts/bench_train.py (tokens/s count non-pad
#                tokens; "% peak" is model FLOPs over this GPU's measured bf16 matmul rate, i.e. MFU)
#   qlora        QLoRA train, merge and an hf export whose check answers as `sft generate` does (bitsandbytes)
#   fsdp2, zero3 with two or more GPUs: train, save, resume under configs/accelerate/{fsdp,deepspeed}.yaml
# usage: bash scripts/gpu_check.sh          (after scripts/setup.sh; PYTHON=... to use another interpreter)
# On a GPU machine without PyPI (a lent device whose image has torch but not trl, datasets or pydantic): download
# sft's dependencies and pytest as wheels on a machine with PyPI into .whl/ (for that machine's Python), build the
# fixtures there (python scripts/build_fixtures.py), carry .whl/ and fixtures/ over, then:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD PYTHON=python3 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
sft=("$py" -m sft_cli)
work=$(mktemp -d)
rows=()
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$gpus" = 0 ]; then
  echo "no CUDA GPU visible to $py: nothing to check here (CI covers the CPU)" >&2
  exit 2
fi

# check NAME COMMAND...: run it, keep its log, and add a table row with its last line
check() {
  local name=$1 start=$SECONDS status=ok
  shift
  "$@" >"$work/$name.log" 2>&1 || status=FAILED
  rows+=("$(printf '%-12s %-7s %5ss  %s' "$name" "$status" $((SECONDS - start)) "$(grep -v '^\s*$' "$work/$name.log" | tail -1 | cut -c1-110)")")
}

quick=(--set training.max_steps=20 --set training.save_steps=5 --set training.eval_steps=5)

check cuda-tests "$py" -m pytest -q -p no:cacheprovider tests/training/test_attention.py tests/training/test_environment.py tests/training/test_memory.py
check attention bash -c "'$py' scripts/bench_attention.py --repeats 10 | tee $work/attention.txt | tail -1"
check environment bash -c "${sft[*]} train configs/quickstart.yaml --dry-run --set output.dir=$work/dry | grep -E 'device|precision|weights|attention|loss' | tr -s ' ' | paste -sd ';'"

"$py" - "$work/qwen2-0.5b" <<'PY' >"$work/model.log" 2>&1
import sys
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
# Qwen2.5-0.5B's shape (494M parameters with its 151,936-token vocabulary) on SmolLM2's tokenizer
config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                     tie_word_embeddings=True)
Qwen2ForCausalLM(config).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained("fixtures/smollm2-135m").save_pretrained(sys.argv[1])
PY
check throughput bash -c "'$py' scripts/bench_train.py --model '$work/qwen2-0.5b' --data mixed --steps 30 --batch 16 --runs sft,trl-default | tee $work/bench.txt | tail -3"

check qlora bash -c "${sft[*]} train configs/quickstart.yaml --set lora.load_in_4bit=true ${quick[*]} --set output.dir=$work/qlora \
  && ${sft[*]} merge $work/qlora -o $work/qlora-merged \
  && ${sft[*]} export $work/qlora --format hf -o $work/qlora-hf --check 8"

if [ "$gpus" -ge 2 ]; then
  for launcher in fsdp deepspeed; do
    for kind in full lora; do
      extra=$([ $kind = full ] && echo "--set lora=null --set training.learning_rate=2e-5" || echo "")
      run="$work/$launcher-$kind"
      check "$launcher-$kind" bash -c "${sft[*]} train configs/quickstart.yaml --accelerate-config configs/accelerate/$launcher.yaml \
        --num-processes 2 ${quick[*]} --set training.max_steps=10 $extra --set output.dir=$run \
        && ${sft[*]} train configs/quickstart.yaml --accelerate-config configs/accelerate/$launcher.yaml --num-processes 2 \
        ${quick[*]} --set training.max_steps=16 $extra --set output.dir=$run --resume \
        && ${sft[*]} generate $run 'Reverse the word: cat' --max-new-tokens 8"
    done
  done
else
  rows+=("$(printf '%-12s %-7s %6s  %s' "fsdp2,zero3" skipped "-" "one GPU visible: the 2-GPU train/save/resume checks need two")")
fi

echo
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
"$py" -c "import torch, transformers, trl, peft, accelerate; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)"
printf '%-12s %-7s %6s  %s\n' check result time "last line of its log (all logs: $work)"
printf '%s\n' "${rows[@]}"
for table in bench attention; do
  [ -f "$work/$table.txt" ] && { echo; cat "$work/$table.txt"; }
done
! printf '%s\n' "${rows[@]}" | grep -q FAILED
