#!/usr/bin/env bash
# The GPU checks of metarl, on a machine with CUDA and metarl installed (PYTHON: its interpreter):
#   bash experiments/gpu_check.sh [OUT_DIR]
# 1. the default test suite with run.device=auto, so every training and evaluation test runs its
#    policy, episodes and meta-update on the GPU; 2. a run trained on cuda, its checkpoint evaluated
#    on cpu; 3. the meta-update of experiments/halfcheetah_vel.yaml timed on cuda and on cpu in one
#    go (metarl bench). Logs and figures go to OUT_DIR (default gpu_check/).
set -u
PYTHON=${PYTHON:-python3}
OUT_DIR=${1:-gpu_check}
mkdir -p "$OUT_DIR"
export MUJOCO_GL=${MUJOCO_GL:-egl} WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
log() { echo "=== $(date +%T) $*"; }
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2
log "tests (run.device=auto: cuda)"
WORKERS=$("$PYTHON" -c "import xdist" 2>/dev/null && echo "-n 8")
METARL_SIM_THREADS=2 OMP_NUM_THREADS=2 timeout 300 "$PYTHON" -m pytest -q $WORKERS -p no:cacheprovider --tb=line -rfE \
  2>&1 | tee "$OUT_DIR/pytest.txt" | tail -40
log "train on cuda, evaluate the checkpoint on cpu"
RUNS=$(mktemp -d)
timeout 90 "$PYTHON" -m metarl.cli train experiments/navigation2d_quick.yaml run.device=cuda "run.output_dir=$RUNS" \
  run.name=gpu run.iterations=5 eval.num_tasks=8 --quiet 2>&1 | tail -8
timeout 60 "$PYTHON" -m metarl.cli evaluate "$RUNS/gpu" run.device=cpu eval.num_tasks=8 2>&1 | tail -6
cp "$RUNS/gpu/metrics.jsonl" "$OUT_DIR/gpu_metrics.jsonl" 2>/dev/null
log "meta-update of halfcheetah_vel.yaml: cuda, then cpu"
for device in cuda cpu; do
  timeout 90 "$PYTHON" -m metarl.cli bench --config experiments/halfcheetah_vel.yaml --set run.device=$device \
    --no-sync --async-envs 0 --repeats 1 --json 2>&1 | tail -1 | tee -a "$OUT_DIR/bench.jsonl"
done
log done
