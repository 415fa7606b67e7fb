"""The training core, plain PyTorch with no Ray: data for one rank, the epoch loop and
validation (`loop`), checkpoints (`checkpoint`), TensorBoard logging (`tensorboard`). `fit`
trains a config in this process; `hpe_ray.distributed` runs the same `Trainer` on Ray Train
workers."""
