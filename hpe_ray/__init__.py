"""hpe-ray: distributed training and hyperparameter search for probabilistic 3D human pose estimation."""

__version__ = "0.1.0"
