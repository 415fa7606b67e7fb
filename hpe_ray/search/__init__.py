"""Hyperparameter search over a YAML search space.

    space.py     the search space file: parsed and checked without Ray
    tune.py      running a search with Ray Tune, Optuna and ASHA
    results.py   an experiment directory read back without Ray: leaderboard, best config
"""
