"""Reading the pickles users' files hold, without running code from them.

VideoPose3D's `data_3d_*.npz` / `data_2d_*.npz` store dicts as pickled object arrays and MMPose's
`cameras.pkl` is a plain pickle: formats that are pickles by design. `pickle.load` on a crafted
file calls whatever function the file names (e.g. `os.system`), before any check of ours runs.
`load_pickle` and `load_npz_object` only rebuild dicts, lists, tuples, sets, strings, bytes,
numbers, None and numpy arrays/scalars; a file naming anything else is refused unrun.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hpe_ray.data.sample import BadSampleError

# (module, name) a numpy array or scalar pickles through, in numpy 1.x and 2.x spellings, and
# the one helper protocol-2 pickles use for bytes. Pure constructors: none runs user code.
_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
    ("collections", "OrderedDict"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only dicts, lists, tuples, strings, "
                                         "numbers and numpy arrays are read from pickles")
        return super().find_class(module, name)


def load_pickle(path: str | Path) -> Any:
    """A pickle file's plain-data content; BadSampleError naming the file for anything else."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _load(f)
    except OSError as err:
        raise BadSampleError(f"{path}: cannot read: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise BadSampleError(f"{path}: not a plain-data pickle: {err}") from None


def load_npz_object(path: str | Path, key: str) -> Any:
    """The object stored under `key` in an .npz (`.item()` of a 0-d object array, else the array).

    Arrays of numbers are read as np.load reads them; object arrays through the restricted
    unpickler.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = f"{key}.npy"
            if member not in archive.namelist():
                found = sorted(name.removesuffix(".npy") for name in archive.namelist())
                raise BadSampleError(f"{path}: no array {key!r} in this .npz (found {found})")
            with archive.open(member) as f:
                raw = io.BytesIO(f.read())
        version = np.lib.format.read_magic(raw)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(raw)
        if dtype.hasobject:
            value = _load(raw)
        else:
            raw.seek(0)
            value = np.lib.format.read_array(raw, allow_pickle=False)
    except BadSampleError:
        raise
    except (OSError, zipfile.BadZipFile) as err:
        raise BadSampleError(f"{path}: not a readable .npz file: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise BadSampleError(f"{path}: array {key!r} is not plain data: {err}") from None
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.hasobject:
        return value.item()
    return value


def _load(f: BinaryIO) -> Any:
    return _RestrictedUnpickler(f, encoding="latin1").load()
