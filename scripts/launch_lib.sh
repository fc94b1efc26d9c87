# Shared by scripts/pretrain.sh and scripts/linear_eval.sh (sourced, not run): checks that refuse bad
# input with one line and exit status 2, GPU counting, and the torchrun / srun + torchrun command line.
#
# Environment read here:
#   PYTHON                  the interpreter (default: the repository's .venv/bin/python, else python3)
#   SLURM_JOB_ID, SLURM_NNODES (or SLURM_JOB_NUM_NODES), SLURM_JOB_NODELIST, SLURM_GPUS_ON_NODE
#                           a SLURM allocation of more than one node -> srun + torchrun, rendezvous on
#                           the first node of the list (`scontrol show hostnames`)
#   MASTER_PORT             the rendezvous port on that node (default 29500)
#   CUDA_VISIBLE_DEVICES    limits the GPUs counted (else `nvidia-smi -L`)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

die() {  # one line on stderr, exit status 2
  echo "$PROG: error: $*" >&2
  exit 2
}

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

yaml_str() {  # a value for --set key=VALUE that YAML reads back as this exact string
  if [[ "$1" =~ ^/[A-Za-z0-9_./+-]*$ || "$1" =~ ^[a-z][a-z0-9_]*$ && ! "$1" =~ ^(true|false|null|yes|no|on|off|y|n)$ ]]; then
    printf '%s' "$1"  # an absolute path or a plain name: YAML reads it as it is
  else
    local s=${1//\'/\'\'}
    printf "'%s'" "$s"
  fi
}

# check_imagefolder DIR: DIR/train and DIR/val in the ImageNet layout (<split>/<class>/<image>).
# Looks at the first class folder of each split only: a full scan of ImageNet takes minutes.
check_imagefolder() {
  local dir=$1 split cls img
  local layout="expected DATA_DIR/train/<class>/<image>.JPEG and DATA_DIR/val/<class>/<image>.JPEG (ImageFolder layout)"
  [[ -e "$dir" ]] || die "DATA_DIR $dir does not exist; $layout"
  [[ -d "$dir" ]] || die "DATA_DIR $dir is not a folder; $layout"
  for split in train val; do
    [[ -d "$dir/$split" ]] || die "DATA_DIR $dir has no '$split' folder; $layout"
    cls=$(find "$dir/$split" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -print -quit)
    [[ -n "$cls" ]] || die "DATA_DIR $dir/$split holds no class sub-folder; $layout"
    img=$(find "$dir/$split" -mindepth 2 -maxdepth 2 -type f \( -iname '*.jpg' -o -iname '*.jpeg' \
          -o -iname '*.png' -o -iname '*.ppm' -o -iname '*.bmp' -o -iname '*.pgm' -o -iname '*.tif' \
          -o -iname '*.tiff' -o -iname '*.webp' \) -print -quit)
    [[ -n "$img" ]] || die "DATA_DIR $dir/$split holds no image in its class folders; $layout"
  done
}

# count_gpus: GPUs of this node (SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES, else nvidia-smi -L).
count_gpus() {
  if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]] && is_count "$SLURM_GPUS_ON_NODE"; then
    echo "$SLURM_GPUS_ON_NODE"; return
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    local ids n=0 id
    IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    for id in ${ids[@]+"${ids[@]}"}; do  # guarded: an empty array is "unbound" under set -u on bash <= 4.3
      [[ "$id" == -* ]] && break  # CUDA stops at the first invalid id
      [[ -n "$id" ]] && n=$((n + 1))
    done
    echo "$n"; return
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    return
  fi
  echo 0
}

# gpu_memory_mib: the memory of this node's smallest GPU in MiB (nvidia-smi), or nothing (status 1).
gpu_memory_mib() {
  local out
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  out=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null) || return 1
  out=$(printf '%s\n' "$out" | tr -d ' ' | grep -E '^[0-9]+$' | sort -n | head -n 1)
  [[ -n "$out" ]] || return 1
  echo "$out"
}

# slurm_nodes: the number of nodes of a multi-node SLURM allocation, or 1.
slurm_nodes() {
  local n=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}
  if [[ -n "${SLURM_JOB_ID:-}" ]] && is_count "$n" && (( n > 1 )); then echo "$n"; else echo 1; fi
}

# plan_processes CPU NPROC: sets NNODES, NPROC (processes per node), WORLD and DEVICE, or refuses.
plan_processes() {
  local cpu=$1 want=$2 gpus
  NNODES=$(slurm_nodes)
  if [[ -n "$want" ]] && ! is_count "$want"; then die "--nproc must be a whole number >= 1, got '$want'"; fi
  if (( cpu )); then
    DEVICE=cpu
    NPROC=${want:-2}
  else
    DEVICE=cuda
    gpus=$(count_gpus)
    (( gpus > 0 )) || die "no GPU found (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them); pass --cpu to run on CPU processes (gloo)"
    if [[ -n "$want" ]] && (( want > gpus )); then die "--nproc $want asks for more processes than the $gpus GPUs of this node"; fi
    NPROC=${want:-$gpus}
  fi
  WORLD=$((NNODES * NPROC))
}

# check_batch BATCH ACCUMULATE: the global batch must split evenly over the processes and micro-batches.
check_batch() {
  local batch=$1 accum=$2
  if (( batch % (WORLD * accum) != 0 )); then
    die "the global batch $batch does not divide over $WORLD processes ($NNODES node(s) x $NPROC) x accumulate $accum; choose a batch_size that is a multiple of $((WORLD * accum)) (-- batch_size=N) or another process count (--nproc N)"
  fi
}

# launcher: sets the array LAUNCH, the command that starts NPROC processes on each of the NNODES nodes.
launcher() {
  local torchrun=("$PYTHON" -m torch.distributed.run)  # torchrun, from the same interpreter
  if (( NNODES > 1 )); then
    local master
    master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    [[ -n "$master" ]] || die "cannot read the first node of SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}' with scontrol"
    LAUNCH=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1
            "${torchrun[@]}" --nnodes="$NNODES" --nproc_per_node="$NPROC"
            --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$master:${MASTER_PORT:-29500}")
  else
    LAUNCH=("${torchrun[@]}" --standalone --nnodes=1 --nproc_per_node="$NPROC")
  fi
}

# run_or_print DRY_RUN CMD...: print the command (shell-quoted, one line) or run it in place of this shell.
run_or_print() {
  local dry=$1; shift
  if (( dry )); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
    exit 0
  fi
  echo "$PROG: running: $(printf '%q ' "$@")" >&2
  exec "$@"
}
