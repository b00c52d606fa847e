#!/bin/bash
# Pretrain on several Slurm nodes with 8 GPUs each: one `accelerate launch` per node, which
# starts one process per GPU. The arguments after the script are the training's own (a recipe,
# key=value overrides, --resume), passed through unchanged: quote a brace list so that your
# shell leaves it to the loader, as below.
#   sbatch recipes/accelerate/slurm.sh recipes/simclr_r50_imagenet.yaml data.train='shards/imagenet/train-{000000..001281}.tar'
# Resubmitting the same command with --resume continues from the run's last checkpoint.
# `sbatch --nodes=N` overrides the 4 nodes below; the process count follows.
#
# Time limits and preemption: 5 minutes before the limit Slurm signals this script (USR1, below);
# it sends SIGTERM through srun and the launchers to every process, which finish their step, save
# a checkpoint and exit; the script then requeues the job, and the requeued job continues with
# --resume. A preempted or cancelled job (`scancel --signal=TERM`) saves the same way.
#SBATCH --job-name=sslpipe
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1          # one launcher per node
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # DALI's decoding threads and the launcher's processes
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@300          # to this script, 300 s before the time limit
#SBATCH --requeue
#SBATCH --open-mode=append           # a requeued job's output goes on in the same file
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=8
# The whole list, then its first line: `| head -n 1` would close the pipe early, and under
# pipefail scontrol's SIGPIPE (exit 141) would end the job.
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_HOST=${HOSTS%%$'\n'*}
MAIN_PORT=29500
# How long a launcher waits for its processes to save after a SIGTERM before it kills them
# (torch's default, 30 s, is too short for a large checkpoint on a shared file system).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}

ARGS=("$@")
if [[ ${SLURM_RESTART_COUNT:-0} -gt 0 && ! " ${ARGS[*]} " =~ " --resume" ]]; then
    ARGS+=(--resume)  # a requeued job continues its run (from step 0 if none was saved yet)
fi

# Each node's task reads its own $SLURM_NODEID, so that one word is left to the inner shell. Its
# program is in single quotes and the rest arrives as its positional arguments, never as program
# text: pasted in, a brace list would expand there into one override per shard (the last winning),
# and a value with a space would split in two.
srun bash -c 'exec accelerate launch --machine_rank "$SLURM_NODEID" "$@"' bash \
    --config_file recipes/accelerate/multinode.yaml \
    --num_machines "$SLURM_NNODES" \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --main_process_ip "$MAIN_HOST" \
    --main_process_port "$MAIN_PORT" \
    -m sslpipe.train "${ARGS[@]}" &
TRAINING=$!

REQUEUE=0
trap 'REQUEUE=1; kill -TERM "$TRAINING"' USR1  # srun passes the SIGTERM on to every task
status=0
wait "$TRAINING" || status=$?
while [[ $REQUEUE == 1 ]] && kill -0 "$TRAINING" 2>/dev/null; do  # `wait` returned for the trap
    wait "$TRAINING" || status=$?
done
if [[ $REQUEUE == 1 ]]; then
    echo "sslpipe: time limit near: the run saved its checkpoint; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
