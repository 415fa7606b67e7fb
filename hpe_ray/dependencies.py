"""What an install of hpe-ray needs beyond itself.

- `import_extra`: a package of an optional extra (pyproject.toml [project.optional-dependencies]),
  imported where a feature needs it, failing with one line that names the extra to install.
- `cluster_requirements`: the dependencies a `ray job submit --runtime-env-json '{"pip": ...}'`
  installs on a Ray cluster, read from this install's metadata (so from pyproject.toml).
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from types import ModuleType

DISTRIBUTION = "hpe-ray"
CLUSTER_PROVIDED = ("torch", "torchvision", "ray")
"""Left out of the cluster requirements: a Ray cluster's image already has them, built for its
hardware (a pip install there would fetch a CUDA build of several GB per job, or one that does not
match the cluster's drivers), and Ray itself must be the version the cluster runs."""


class MissingExtraError(ImportError):
    """A feature's optional package is not installed; the message names the extra."""


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """`import module`, or MissingExtraError: "<purpose> needs `pip install 'hpe-ray[<extra>]'`"."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{purpose} needs `pip install '{DISTRIBUTION}[{extra}]'` "
                                f"({module} is not installed: {err})") from None


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string: 'Ray[tune]==2.6' -> 'ray'."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if name is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def cluster_requirements(extras: tuple[str, ...] = (), exclude: tuple[str, ...] = CLUSTER_PROVIDED) -> list[str]:
    """The installed hpe-ray's dependencies (plus those of `extras`) as pip requirement strings,
    without the packages in `exclude`; for a Ray job's runtime environment."""
    requirements = []
    for line in metadata.requires(DISTRIBUTION) or []:
        requirement, _, marker = line.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra is not None and extra.group(1) not in extras:
            continue
        if requirement_name(requirement) not in exclude:
            # an extra's marker is only `extra == "..."`; any other marker stays for pip to evaluate
            requirements.append(requirement.strip() if extra is not None else line.strip())
    return requirements
