#!/usr/bin/env bash
# The GPU checks of metarl, on a machine with CUDA and metarl installed (PYTHON: its interpreter):
#   bash experiments/gpu_check.sh [OUT_DIR]
# 1. the default test suite with run.device=auto, so the runs its tests train and evaluate (all but
#    those that pin run.device=cpu) put the policy, episodes and meta-update on the GPU; with
#    pytest-xdist installed, on 8 workers; 2. a run trained on cuda whose checkpoint is evaluated on
#    cpu, both evaluations kept; 3. the meta-update of experiments/halfcheetah_vel.yaml timed on cuda
#    and on cpu (metarl bench). Logs and figures go to OUT_DIR (default gpu_check/). The exit code
#    is 0 only if every step passed. TEST_TIMEOUT (seconds, default 900) bounds step 1.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT_DIR=${1:-gpu_check}
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
mkdir -p "$OUT_DIR"
export WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
if [ -z "${MUJOCO_GL:-}" ]; then  # EGL where MuJoCo can load it; without libEGL even `import mujoco` fails
  if MUJOCO_GL=egl "$PYTHON" -c "import mujoco" 2>/dev/null; then
    export MUJOCO_GL=egl
  else
    echo "MuJoCo does not import with MUJOCO_GL=egl here (no libEGL?): MUJOCO_GL=disable, rendering off"
    export MUJOCO_GL=disable
  fi
fi
failed=()
log() { echo "=== $(date +%T) $*"; }
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2

log "tests (run.device=auto: cuda)"
WORKERS=$("$PYTHON" -c "import xdist" 2>/dev/null && echo "-n 8")
METARL_SIM_THREADS=2 OMP_NUM_THREADS=2 timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest -q $WORKERS -p no:cacheprovider --tb=line -rfE \
  > "$OUT_DIR/pytest.txt" 2>&1 || failed+=(tests)
tail -40 "$OUT_DIR/pytest.txt"

log "train on cuda, evaluate the checkpoint on cpu"
RUNS=$(mktemp -d)
if timeout 180 "$PYTHON" -m metarl.cli train experiments/navigation2d_quick.yaml run.device=cuda "run.output_dir=$RUNS" \
     run.name=gpu run.iterations=5 eval.num_tasks=8 > "$OUT_DIR/train_cuda.txt" 2>&1 \
   && timeout 120 "$PYTHON" -m metarl.cli evaluate "$RUNS/gpu" run.device=cpu --out "$OUT_DIR/eval_cpu.json" \
     > "$OUT_DIR/evaluate_cpu.txt" 2>&1; then
  cp "$RUNS/gpu/eval.json" "$OUT_DIR/eval_cuda.json"
  cp "$RUNS/gpu/metrics.jsonl" "$OUT_DIR/metrics_cuda.jsonl"
  "$PYTHON" -c "import json, sys
cuda, cpu = (json.load(open(f'$OUT_DIR/eval_{d}.json'))['mean_return'] for d in ('cuda', 'cpu'))
print('mean return after 0.. steps, cuda:', [round(x, 2) for x in cuda], 'cpu:', [round(x, 2) for x in cpu])"
else
  failed+=(cuda-run)
  tail -20 "$OUT_DIR/train_cuda.txt" "$OUT_DIR/evaluate_cpu.txt" 2>/dev/null
fi

log "meta-update of halfcheetah_vel.yaml: cuda, then cpu"
for device in cuda cpu; do
  timeout 180 "$PYTHON" -m metarl.cli bench --config experiments/halfcheetah_vel.yaml --set run.device=$device \
    --no-sync --async-envs 0 --repeats 1 --json > "$OUT_DIR/bench_$device.txt" 2>&1 || failed+=("bench-$device")
  tail -1 "$OUT_DIR/bench_$device.txt"
done

log "done; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
