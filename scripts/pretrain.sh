#!/usr/bin/env bash
# Pre-train a method on ImageNet with the paper's recipe, on every GPU of this node or of a SLURM job.
#
#   scripts/pretrain.sh METHOD DATA_DIR [OUT_DIR] [options] [-- key=value ...]
#
#   METHOD     simclr, byol, dino, swav, deepcluster, or the ER variant of one (simclr_er, ...)
#   DATA_DIR   ImageNet in ImageFolder layout: DATA_DIR/train/<class>/*.JPEG and DATA_DIR/val/<class>/*.JPEG
#   OUT_DIR    the run's folder (default runs/imagenet/METHOD); holds config.yaml, metrics.jsonl,
#              checkpoint.pt and results.json
#   key=value  overrides of the config (mvssl_core/config.py keys), e.g. -- accumulate=2 optim.lr=0.2
#              Without accumulate=N, a GPU run takes the smallest accumulation whose micro-batch fits 75 % of
#              the smallest GPU's memory (mvssl_core/memory_plan.py; README, "Per-GPU batch"), and says so.
#
# Options:
#   --cpu               run NPROC CPU processes (gloo) instead of one process per GPU
#   --nproc N           processes per node (default: the GPUs found; 2 with --cpu)
#   --config FILE       the recipe (default scripts/configs/imagenet/METHOD.yaml: ResNet-50, 400 epochs,
#                       global batch 4096, LARS, warm-up + cosine, the method's heads and schedules)
#   --results-dir DIR   where results/imagenet/<run>.json goes (default results/imagenet; <run> is
#                       OUT_DIR's name), the file the book reads, besides OUT_DIR/results.json
#   --stop-after N      stop after N optimizer steps, as a pre-emption would (to try resuming)
#   --dry-run           print the command it would run, run nothing
#
# One node: torchrun --standalone --nproc_per_node=<GPUs>. A SLURM job of several nodes (see
# scripts/pretrain.sbatch): srun starts one torchrun per node, which meet at the first node of the job.
# Resuming is automatic: with OUT_DIR/checkpoint.pt present the run continues where it stopped
# (pre-emption, time limits: just submit the same command again); with OUT_DIR/results.json present
# the run is finished and nothing is done.
# Pre-emption and time limits: SIGUSR1 or SIGTERM to this script is passed on to the launcher as SIGTERM
# (torchrun and srun pass it on to the training processes, which get TORCH_ELASTIC_SHUTDOWN_TIMEOUT, here
# 240 s by default, before SIGKILL); every process finishes its step, the checkpoint of that step is
# written, and this script exits 0. SLURM sends SIGUSR1 300 s before the time limit (#SBATCH
# --signal=B:USR1@300, here and in pretrain.sbatch); on it the script requeues the job (scontrol requeue),
# which then resumes on its own. A SIGTERM inside a SLURM job is not passed on: SLURM sends it to every
# process of the job.
# It refuses, with one line and exit status 2: a DATA_DIR that is missing or not in ImageFolder layout,
# a global batch that does not divide over the processes, no GPU without --cpu, an unknown METHOD.
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
set -euo pipefail
PROG=$(basename "$0")
source "$(dirname "$0")/launch_lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | grep -v '^#SBATCH' | sed 's/^# \{0,1\}//'; }

CPU=0 DRY=0 NPROC_WANT="" STOP_AFTER="" CONFIG="" RESULTS_DIR="$REPO/results/imagenet"
POS=() OVERRIDES=()
while (( $# )); do
  case "$1" in
    --cpu) CPU=1 ;;
    --dry-run) DRY=1 ;;
    --nproc) (( $# >= 2 )) || die "--nproc needs a number"; NPROC_WANT=$2; shift ;;
    --nproc=*) NPROC_WANT=${1#*=} ;;
    --stop-after) (( $# >= 2 )) || die "--stop-after needs a number"; STOP_AFTER=$2; shift ;;
    --stop-after=*) STOP_AFTER=${1#*=} ;;
    --config) (( $# >= 2 )) || die "--config needs a file"; CONFIG=$2; shift ;;
    --config=*) CONFIG=${1#*=} ;;
    --results-dir) (( $# >= 2 )) || die "--results-dir needs a folder"; RESULTS_DIR=$2; shift ;;
    --results-dir=*) RESULTS_DIR=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) POS+=("$1") ;;
  esac
  shift
done
(( ${#POS[@]} >= 2 && ${#POS[@]} <= 3 )) || die "usage: $PROG METHOD DATA_DIR [OUT_DIR] [--cpu] [--nproc N] [--dry-run] [-- key=value ...]"
METHOD=${POS[0]} DATA_DIR=${POS[1]} OUT_DIR=${POS[2]:-runs/imagenet/${POS[0]}}

for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
  [[ "$o" == *=* ]] || die "override '$o' after -- must look like key=value (e.g. optim.lr=0.2)"
done
if [[ -z "$CONFIG" ]]; then
  CONFIG="$REPO/scripts/configs/imagenet/$METHOD.yaml"
  if [[ ! -f "$CONFIG" ]]; then
    known=$(cd "$REPO/scripts/configs/imagenet" && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')
    die "unknown METHOD '$METHOD'; one of: ${known% }"
  fi
fi
[[ -f "$CONFIG" ]] || die "config file $CONFIG not found"

check_imagefolder "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
OUT_DIR=$(realpath -m -- "$OUT_DIR")
CONFIG=$(realpath -m -- "$CONFIG")
RESULTS_FILE=$(realpath -m -- "$RESULTS_DIR")/$(basename "$OUT_DIR").json

if [[ -f "$OUT_DIR/results.json" ]]; then
  echo "$PROG: $OUT_DIR is finished ($OUT_DIR/results.json exists); nothing to do (a new run needs another OUT_DIR)" >&2
  exit 0
fi

plan_processes "$CPU" "$NPROC_WANT"

# the run's global batch and accumulation, from the recipe and the overrides (without importing torch)
read -r BATCH ACCUM < <("$PYTHON" -c '
import sys
from mvssl_core.config import ConfigError, RunConfig, apply_overrides, from_dict, read_yaml
try:
    cfg = from_dict(RunConfig, apply_overrides(read_yaml(sys.argv[1]), sys.argv[2:]))
except (ConfigError, FileNotFoundError) as e:
    print(f"error {e}".replace("\n", " "))
else:
    print(cfg.batch_size, cfg.accumulate)
' "$CONFIG" ${OVERRIDES[@]+"${OVERRIDES[@]}"}) || die "could not read the config with $PYTHON"
[[ "$BATCH" != error ]] || die "config $CONFIG with the overrides: $ACCUM"
check_batch "$BATCH" "$ACCUM"

# GPU memory (mvssl_core/memory_plan.py): unless the command line sets accumulate, the smallest accumulation
# whose micro-batch keeps its activations in 75 % of the smallest GPU's memory; a resumed run keeps its own.
SET_ACCUM=0
for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do [[ "$o" == accumulate=* ]] && SET_ACCUM=1; done
if (( ! CPU && ! SET_ACCUM )); then
  if [[ -f "$OUT_DIR/checkpoint.pt" && -f "$OUT_DIR/config.yaml" ]]; then
    SAVED=$("$PYTHON" -c 'import sys; from mvssl_core.config import read_yaml; print(read_yaml(sys.argv[1]).get("accumulate", 1))' \
            "$OUT_DIR/config.yaml") || die "could not read accumulate from $OUT_DIR/config.yaml"
    if [[ "$SAVED" != "$ACCUM" ]]; then
      echo "$PROG: resuming with the run's accumulate=$SAVED ($OUT_DIR/config.yaml)" >&2
      OVERRIDES+=("accumulate=$SAVED") ACCUM=$SAVED
    fi
  elif GPU_MIB=$(gpu_memory_mib); then
    if PLAN=$("$PYTHON" -m mvssl_core.memory_plan "$CONFIG" --world "$WORLD" --gpu-mib "$GPU_MIB" \
              ${OVERRIDES[@]+"${OVERRIDES[@]}"} 2>&1); then
      read -r PLAN_ACCUM MICRO ACT_MIB <<< "$PLAN"
      if (( PLAN_ACCUM != ACCUM )); then
        echo "$PROG: $((BATCH / WORLD / ACCUM)) samples per GPU at a time would keep about $(( BATCH / WORLD / ACCUM * ACT_MIB / MICRO / 1024 )) GiB of activations, more than 75 % of the GPU's $GPU_MIB MiB: accumulate=$PLAN_ACCUM ($MICRO samples per GPU at a time, about $((ACT_MIB / 1024)) GiB; the global batch stays $BATCH; -- accumulate=N chooses)" >&2
        OVERRIDES+=("accumulate=$PLAN_ACCUM") ACCUM=$PLAN_ACCUM
      fi
    else
      echo "$PROG: no memory plan (${PLAN##*error: }); accumulate=$ACCUM as the recipe says" >&2
    fi
  else
    echo "$PROG: GPU memory unknown (nvidia-smi --query-gpu=memory.total); accumulate=$ACCUM as the recipe says" >&2
  fi
  check_batch "$BATCH" "$ACCUM"
fi

ARGS=(-m mvssl_core pretrain --config "$CONFIG"
      --set "method=$(yaml_str "$METHOD")" --set data.name=imagefolder --set "data.root=$(yaml_str "$DATA_DIR")"
      --set "out=$(yaml_str "$OUT_DIR")" --set "results_file=$(yaml_str "$RESULTS_FILE")")
(( CPU )) && ARGS+=(--set device=cpu)
if [[ -n "$STOP_AFTER" ]]; then
  is_count "$STOP_AFTER" || die "--stop-after must be a whole number >= 1, got '$STOP_AFTER'"
  ARGS+=(--stop-after "$STOP_AFTER")
fi
[[ -t 2 ]] || ARGS+=(--no-progress)  # a log file gets a line every 10% instead of a progress bar
if [[ -f "$OUT_DIR/checkpoint.pt" ]]; then
  ARGS+=(--resume)
  echo "$PROG: resuming from $OUT_DIR/checkpoint.pt" >&2
fi
for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do ARGS+=(--set "$o"); done

launcher
(( DRY )) && run_or_print 1 "${LAUNCH[@]}" "${ARGS[@]}"

# Run the launcher as a child, so that a stop signal can be passed on and the job requeued afterwards.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}
STOP_SIGNAL="" STOP_TIME=""
stop() {  # SIGNAL: remember it, pass SIGTERM on to the launcher (once)
  [[ -n "$STOP_SIGNAL" ]] && return
  STOP_SIGNAL=$1 STOP_TIME=$(date +%s)
  echo "$PROG: got SIG$1; stopping the run after its current step (checkpoint in $OUT_DIR)" >&2
  # SLURM sends its SIGTERM (time limit, scancel, pre-emption) to every process of the job, the launcher
  # included: a second one would cut torchrun's wait for its workers short
  [[ "$1" == TERM && -n "${SLURM_JOB_ID:-}" ]] || kill -TERM "$CHILD" 2>/dev/null || true
}
echo "$PROG: running: $(printf '%q ' "${LAUNCH[@]}" "${ARGS[@]}")" >&2
"${LAUNCH[@]}" "${ARGS[@]}" &
CHILD=$!
trap 'stop USR1' USR1
trap 'stop TERM' TERM
while :; do
  STATUS=0
  wait "$CHILD" || STATUS=$?
  kill -0 "$CHILD" 2>/dev/null || break  # else a trapped signal interrupted the wait
done
trap - USR1 TERM
[[ -n "$STOP_SIGNAL" && ! -f "$OUT_DIR/results.json" ]] || exit "$STATUS"
# the launcher's status says little here (torchrun exits 1 after passing a signal on): a checkpoint written
# since the signal is the proof that the run stopped cleanly
if [[ ! -f "$OUT_DIR/checkpoint.pt" ]] || (( $(stat -c %Y "$OUT_DIR/checkpoint.pt") < STOP_TIME - 1 )); then
  echo "$PROG: error: the run did not write a checkpoint after SIG$STOP_SIGNAL (launcher exit status $STATUS)" >&2
  exit $(( STATUS ? STATUS : 1 ))
fi
step=$("$PYTHON" -c 'import sys, torch; print(torch.load(sys.argv[1], weights_only=True)["step"])' \
       "$OUT_DIR/checkpoint.pt" 2>/dev/null) || step="?"
if [[ "$STOP_SIGNAL" == USR1 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "$PROG: stopped at step $step (checkpoint $OUT_DIR/checkpoint.pt); requeueing SLURM job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID" || die "scontrol requeue $SLURM_JOB_ID failed; submit the same command again to resume"
else
  echo "$PROG: stopped at step $step (checkpoint $OUT_DIR/checkpoint.pt); run the same command again to resume" >&2
fi
exit 0
