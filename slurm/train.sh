#!/bin/bash
# One training run (Ray Train, DDP over every GPU of the allocation) on a Ray cluster.
#
#   sbatch slurm/train.sh --config runs/tune-lifting/best_config.yaml --workers 8 --gpus-per-worker 1
#
# Every argument goes to `hpe-ray train` unchanged; the driver finds the cluster through
# RAY_ADDRESS. Checkpoints are written every epoch and running the same command again continues
# from the last one: USR1 (10 minutes before the time limit) ends the driver and the cluster
# cleanly, and resubmitting the job resumes the run. run.storage must be on a
# filesystem all nodes share. Submit from the repository root (or set HPE_RAY_ROOT); the
# #SBATCH lines below are defaults, and sbatch options override them.
#
#SBATCH --job-name=hpe-ray-train
##SBATCH --account=YOUR_ACCOUNT
##SBATCH --partition=YOUR_PARTITION
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gres=gpu:4
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --output=%x-%j.out

set -euo pipefail
HPE_RAY_ROOT=${HPE_RAY_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
HPE_RAY=${HPE_RAY:-python -m hpe_ray}   # e.g. "$HPE_RAY_ROOT/.venv/bin/python -m hpe_ray"
source "$HPE_RAY_ROOT/slurm/ray_cluster.sh"

start_ray_cluster
# $HPE_RAY is split into words on purpose: it is a command with arguments.
run_driver $HPE_RAY train "$@"
