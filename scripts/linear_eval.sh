#!/usr/bin/env bash
# The linear-evaluation protocol on a finished pre-training run; writes top-1 and top-5 into its results.
#
#   scripts/linear_eval.sh RUN_DIR DATA_DIR [options] [-- extra arguments of python -m mvssl_core linear-eval]
#
#   RUN_DIR    a finished run of scripts/pretrain.sh (holds checkpoint.pt and results.json)
#   DATA_DIR   ImageNet in ImageFolder layout (DATA_DIR/train/<class>/..., DATA_DIR/val/<class>/...)
#
# Options:
#   --cpu               run NPROC CPU processes (gloo) instead of one process per GPU
#   --nproc N           processes per node (default: the GPUs found; 2 with --cpu)
#   --epochs N          epochs of the linear head (default 100)
#   --batch-size N      the global batch (default 1024)
#   --lr X              base learning rate, scaled by batch/256 (default 0.1)
#   --dry-run           print the command it would run, run nothing
#
# The protocol (mvssl_core.evaluate.linear_eval): the frozen encoder (eval mode) encodes augmented
# training images (random resized crop + flip) and centre crops of the validation images; a linear
# head is trained for 100 epochs by SGD with Nesterov momentum 0.9 and a cosine learning rate, no
# weight decay. top1, top5 (fractions) and the recipe go to metrics.linear_eval of RUN_DIR/results.json
# and of the run's results/imagenet/<run>.json, each written atomically.
# Launch, GPU counting and refusals as scripts/pretrain.sh (one node, or srun + torchrun under SLURM).
set -euo pipefail
PROG=$(basename "$0")
source "$(dirname "$0")/launch_lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

CPU=0 DRY=0 NPROC_WANT="" BATCH=1024  # the default batch of mvssl_core.evaluate.linear_eval
POS=() PROTOCOL=() EXTRA=()
while (( $# )); do
  case "$1" in
    --cpu) CPU=1 ;;
    --dry-run) DRY=1 ;;
    --nproc) (( $# >= 2 )) || die "--nproc needs a number"; NPROC_WANT=$2; shift ;;
    --nproc=*) NPROC_WANT=${1#*=} ;;
    --epochs|--lr) (( $# >= 2 )) || die "$1 needs a value"; PROTOCOL+=("$1" "$2"); shift ;;
    --batch-size) (( $# >= 2 )) || die "$1 needs a value"; BATCH=$2; PROTOCOL+=("$1" "$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) POS+=("$1") ;;
  esac
  shift
done
(( ${#POS[@]} == 2 )) || die "usage: $PROG RUN_DIR DATA_DIR [--cpu] [--nproc N] [--epochs N] [--batch-size N] [--lr X] [--dry-run]"
RUN_DIR=${POS[0]} DATA_DIR=${POS[1]}
is_count "$BATCH" || die "--batch-size must be a whole number >= 1, got '$BATCH'"

[[ -d "$RUN_DIR" ]] || die "RUN_DIR $RUN_DIR does not exist; pass the folder of a scripts/pretrain.sh run"
[[ -f "$RUN_DIR/checkpoint.pt" ]] || die "RUN_DIR $RUN_DIR holds no checkpoint.pt; pass the folder of a scripts/pretrain.sh run"
[[ -f "$RUN_DIR/results.json" ]] || die "RUN_DIR $RUN_DIR holds no results.json: its pre-training has not finished (run scripts/pretrain.sh again to resume it)"
check_imagefolder "$DATA_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
DATA_DIR=$(cd "$DATA_DIR" && pwd)

plan_processes "$CPU" "$NPROC_WANT"
check_batch "$BATCH" 1

ARGS=(-m mvssl_core linear-eval "$RUN_DIR" --set "data.root=$(yaml_str "$DATA_DIR")"
      --device "$DEVICE" ${PROTOCOL[@]+"${PROTOCOL[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
launcher
run_or_print "$DRY" "${LAUNCH[@]}" "${ARGS[@]}"
