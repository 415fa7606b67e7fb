#!/bin/bash
# Hyperparameter search on a Ray cluster spanning the allocation (head on the first node).
#
#   sbatch slurm/tune.sh --space tune_spaces/lifting.yaml --data /shared/h36m-shards \
#       --storage /shared/runs --resume
#
# Every argument goes to `hpe-ray tune` unchanged. With --resume a resubmitted job continues
# the search: USR1, sent 10 minutes before the time limit, makes Tune stop and save it.
# --storage must be on a filesystem all nodes share. Submit from the repository root (or set
# HPE_RAY_ROOT); the #SBATCH lines below are defaults, and sbatch options override them.
#
#SBATCH --job-name=hpe-ray-tune
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
run_driver $HPE_RAY tune --address "$RAY_ADDRESS" "$@"
