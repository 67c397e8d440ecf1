# Sourced by train.sbatch and grid.sbatch: the environment both read (docs/slurm.md).
#   NERPOS_CONFIG   training config (TOML), required
#   NERPOS_SETS     extra overrides, space-separated KEY=VALUE pairs (e.g. "lr=3e-5 epochs=2")
#   NERPOS_DEVICE   cuda or cpu (default: cuda when Slurm gave this job GPUs, else cpu)
#   NERPOS_BIN      folder holding nerpos-train and nerpos-launch (default: target/cuda/bin for cuda,
#                   target/release for cpu; build with launch/build-cuda.sh or cargo build --release)
#   NERPOS_ROOT     the checkout the relative paths of the config start from (default: the submit dir)
set -uo pipefail
cd "${NERPOS_ROOT:-${SLURM_SUBMIT_DIR:-.}}" || exit 1
config=${NERPOS_CONFIG:?set NERPOS_CONFIG to a training config, e.g. sbatch --export=ALL,NERPOS_CONFIG=configs/x.toml}
sets=()
for s in ${NERPOS_SETS:-}; do sets+=(--set "$s"); done
if [[ -z ${NERPOS_DEVICE:-} ]]; then
  if [[ -n ${SLURM_GPUS_ON_NODE:-} && ${SLURM_GPUS_ON_NODE:-0} != 0 ]] || [[ -n ${SLURM_JOB_GPUS:-} ]]; then
    NERPOS_DEVICE=cuda
  else
    NERPOS_DEVICE=cpu
  fi
fi
if [[ $NERPOS_DEVICE == cuda ]]; then bin=${NERPOS_BIN:-target/cuda/bin}; else bin=${NERPOS_BIN:-target/release}; fi
launcher=target/release/nerpos-launch
[[ -x $bin/nerpos-launch ]] && launcher=$bin/nerpos-launch
for f in "$bin/nerpos-train" "$launcher"; do
  [[ -x $f ]] || { echo "error: $f not found: build first (docs/slurm.md)" >&2; exit 1; }
done
# Threads per process: the CPUs Slurm gave each task.
export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${RAYON_NUM_THREADS:-1}}

# train_step RUN_DIR CONFIG JOB_TO_REQUEUE: one data-parallel run, one srun task per GPU (or CPU
# process). What to do with the run folder (nothing, resume, start) and whether it stopped to be
# requeued are nerpos-launch's answers (`status`), not this script's: on USR1 (the time limit or a
# preemption is near) every rank checkpoints and the run is recorded as interrupted; the job is then
# requeued to continue from the checkpoint.
train_step() {
  local run_dir=$1 cfg=$2 requeue=$3 args next
  next=$("$launcher" status --next "$run_dir") || return 1
  case $next in
    done)
      echo "$run_dir: finished earlier"
      return 0 ;;
    resume)
      echo "$run_dir: resuming from its checkpoint (restart ${SLURM_RESTART_COUNT:-0})"
      args=(--resume "$run_dir") ;;
    *) args=(--config "$cfg") ;;
  esac
  args+=("${sets[@]}" --set "device=$NERPOS_DEVICE")
  echo "job ${SLURM_JOB_ID:-?}: ${SLURM_NTASKS:-1} task(s) on ${SLURM_JOB_NODELIST:-?}, device $NERPOS_DEVICE, run $run_dir"
  srun --kill-on-bad-exit=1 "$bin/nerpos-train" "${args[@]}"
  local rc=$?
  if [[ $rc -ne 0 && $("$launcher" status "$run_dir") == interrupted ]]; then
    echo "checkpointed before the time limit; requeueing $requeue"
    scontrol requeue "$requeue"
    return 0
  fi
  return $rc
}
