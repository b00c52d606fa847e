#!/bin/bash
# Pretrain on several Slurm nodes with 8 GPUs each: one `accelerate launch` per node, which
# starts one process per GPU. The arguments after the script are the training's own (a recipe,
# key=value overrides, --resume), passed through unchanged: quote a brace list so that your
# shell leaves it to the loader, as below.
#   sbatch recipes/accelerate/slurm.sh recipes/simclr_r50_imagenet.yaml data.train='shards/imagenet/train-{000000..001281}.tar'
# Resubmitting the same command with --resume continues from the run's last checkpoint.
# `sbatch --nodes=N` overrides the 4 nodes below; the process count follows.
#SBATCH --job-name=sslpipe
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1          # one launcher per node
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # DALI's decoding threads and the launcher's processes
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=8
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=29500

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
    -m sslpipe.train "$@"
