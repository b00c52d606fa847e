#!/bin/bash
# Pretrain on several Slurm nodes with 8 GPUs each: one `accelerate launch` per node, which
# starts one process per GPU.
#   sbatch recipes/accelerate/slurm.sh recipes/simclr_r50_imagenet.yaml data.train='shards/imagenet/train-{000000..001281}.tar'
# Resubmitting the same command with --resume continues from the run's last checkpoint.
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

srun bash -c "accelerate launch \
    --config_file recipes/accelerate/multinode.yaml \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_HOST \
    --main_process_port $MAIN_PORT \
    -m sslpipe.train $*"
