#!/usr/bin/env bash
# The Slurm job scripts against a real Slurm: installs slurm-wlm and munge from Debian's packages (as
# root), runs slurmctld + slurmd on this host with a generated slurm.conf (CPU-only node), submits
# launch/slurm/train.sbatch (2 tasks, CPU backend, the trainer tests' tiny world) and
# launch/slurm/grid.sbatch (a 4-point array), waits with a bound, checks the runs, stops the daemons.
# Skips (exit 0, with the reason) only where Slurm cannot be installed. Uses the debug binaries
# that `cargo test` builds (target/debug); builds them if absent.
# Usage: tests/slurm/run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

skip() { echo "SKIP tests/slurm: $*"; exit 0; }
fail() { echo "FAIL tests/slurm: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [[ $(id -u) == 0 ]] || skip "Slurm is not installed and installing it needs root"
  command -v apt-get >/dev/null || skip "Slurm is not installed and there is no apt-get"
  echo "installing slurm-wlm and munge from Debian's packages ..."
  if ! (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null); then
    skip "apt-get could not install slurm-wlm and munge"
  fi
fi
[[ $(id -u) == 0 ]] || skip "starting slurmctld/slurmd with this configuration needs root"

scratch=$(mktemp -d /tmp/nerpos-slurm-XXXXXX)
host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$scratch"/{state,spool,log}
cleanup() {
  [[ -f $scratch/slurmd.pid ]] && kill "$(cat "$scratch/slurmd.pid")" 2>/dev/null || true
  [[ -f $scratch/slurmctld.pid ]] && kill "$(cat "$scratch/slurmctld.pid")" 2>/dev/null || true
  sleep 1
  if [[ ${keep:-0} == 0 ]]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT

# munge: a key, then the daemon as the munge user.
if ! pgrep -x munged >/dev/null; then
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- munged || fail "munged did not start"
fi

port=$((16817 + RANDOM % 1000))
cat >"$scratch/slurm.conf" <<CONF
ClusterName=nerpostest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF=$scratch/slurm.conf
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start (see $scratch/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start (see $scratch/log/slurmd.log)"
for _ in $(seq 1 30); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^idle' && break
  sleep 1
done
sinfo -h -o %t | grep -qE '^idle' || { keep=1; fail "the node did not come up idle: $(sinfo 2>&1); logs in $scratch/log"; }
echo "slurm up: $(sinfo -h -o '%P %D %t %c')"

# Binaries (debug, as cargo test builds them) and the tiny world.
if [[ ! -x target/debug/nerpos-train || ! -x target/debug/nerpos-launch || ! -x target/debug/examples/tiny_world ]]; then
  cargo build -j2 -p nerpos-train -p nerpos-launch --bins --example tiny_world
fi
IFS=$'\t' read -r model data < <(target/debug/examples/tiny_world "$scratch/world" 300)
cat >"$scratch/train.toml" <<CONF
data = "$data"
model = "$model"
out = "$scratch/runs/train"
batch_size = 8
lr = 1e-3
epochs = 2
warmup_ratio = 0.1
eval_batch_size = 32
CONF
sed "s#out = .*#out = \"$scratch/runs/grid\"#" "$scratch/train.toml" >"$scratch/grid.toml"
printf '[grid]\nlr = [1e-3, 3e-3]\nuse_pos = [true, false]\n' >>"$scratch/grid.toml"

export_vars="ALL,NERPOS_BIN=target/debug,NERPOS_DEVICE=cpu,NERPOS_ROOT=$root"
train_job=$(sbatch --parsable --ntasks=2 --cpus-per-task=1 --output="$scratch/train-%j.out" --chdir "$root" \
  --export="$export_vars,NERPOS_CONFIG=$scratch/train.toml" launch/slurm/train.sbatch)
n=$(target/debug/nerpos-launch grid-point --config "$scratch/grid.toml" --count)
[[ $n == 4 ]] || fail "the grid has $n points, expected 4"
grid_job=$(sbatch --parsable --array=0-$((n - 1)) --ntasks=1 --cpus-per-task=1 --output="$scratch/grid-%A_%a.out" \
  --chdir "$root" --export="$export_vars,NERPOS_CONFIG=$scratch/grid.toml" launch/slurm/grid.sbatch)
echo "submitted train.sbatch as job $train_job, grid.sbatch as array $grid_job"

deadline=$((SECONDS + 900))
while squeue -h -j "$train_job,$grid_job" 2>/dev/null | grep -q .; do
  if [[ $SECONDS -gt $deadline ]]; then
    squeue
    keep=1
    fail "jobs still running after 900 s (outputs in $scratch)"
  fi
  sleep 3
done

show() { for f in "$scratch"/$1; do echo "---- $f"; tail -30 "$f"; done; }
summary=$scratch/runs/train/summary.json
[[ -f $summary ]] || { show 'train-*.out'; keep=1; fail "train.sbatch did not finish its run"; }
grep -q '"status": "finished"' "$summary" || fail "train run status: $(cat "$summary")"
grep -q '"world_size": 2' "$summary" || fail "the train run did not have 2 ranks: $(cat "$summary")"
final=$(sed -n 's/.*"weights_sha256": "\([0-9a-f]*\)".*/\1/p' "$summary")
out_file=$(ls "$scratch"/train-*.out)
# Rank 0 gathers every rank's hash of the final weights and logs them once when they agree (it stops
# the run when they do not).
grep -F "weights identical on all ranks at the end" "$out_file" | grep -F "weights_sha256=$final" |
  grep -qF "ranks=2" ||
  { show 'train-*.out'; fail "the final weights hash $final was not confirmed on both ranks"; }
echo "train.sbatch: finished with 2 ranks, both with final weights $final"

md=$scratch/runs/grid/results.md
[[ -f $md ]] || { show 'grid-*.out'; fail "grid.sbatch wrote no results.md"; }
rows=$(tail -n +3 "$md" | grep -c '^|' || true)
[[ $rows == 4 ]] || { cat "$md"; show 'grid-*.out'; fail "results.md has $rows rows, expected 4"; }
finished=$(grep -c 'finished' "$md" || true)
[[ $finished == 4 ]] || { cat "$md"; show 'grid-*.out'; fail "$finished of 4 grid points finished"; }
cat "$md"
echo "PASS tests/slurm: train.sbatch (2 ranks) and grid.sbatch (4-point array) under slurmctld/slurmd"
