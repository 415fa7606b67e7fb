"""Member offset index of a tar shard: read samples by seek instead of parsing tar headers.

Beside each shard `S.tar` the conversion writes `S.tar.idx` (JSON): the shard's size and, per
member in order, [name, offset of its data, size]. A reader seeks to each sample's span, reads
it in one call and checks each wanted member's own 512-byte tar header there (name, size,
header checksum) before using its bytes, so an index that disagrees with its tar (shard edited,
replaced or truncated after conversion) raises `tarfile.ReadError` naming both, and is never
read wrongly. Webdataset's indexed reader (`wids`) is not in the pinned webdataset release; a
shard without an index is read with `tarfile` as before.
"""

from __future__ import annotations

import json
import os
import tarfile
from itertools import groupby
from pathlib import Path
from typing import Iterator

INDEX_SUFFIX = ".idx"
_HEADER = tarfile.BLOCKSIZE  # 512


def index_path(shard: str | os.PathLike) -> Path:
    return Path(f"{shard}{INDEX_SUFFIX}")


def tar_members(shard: str | os.PathLike) -> list[list]:
    """[name, data offset, size] of every regular member of a tar, in order (tarfile)."""
    with tarfile.open(shard, "r:") as tar:
        return [[m.name, m.offset_data, m.size] for m in tar if m.isfile()]


def write_member_index(shard: str | os.PathLike) -> Path:
    """Write `S.tar.idx` for a finished shard; returns its path."""
    path = index_path(shard)
    path.write_text(json.dumps({"tar_bytes": Path(shard).stat().st_size, "members": tar_members(shard)}))
    return path


def read_member_index(shard: str | os.PathLike) -> list[list] | None:
    """The members of a shard's index, or None when it has none (converted before indexes)."""
    path = index_path(shard)
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
        members, tar_bytes = index["members"], index["tar_bytes"]
    except (ValueError, KeyError, TypeError) as err:
        raise tarfile.ReadError(f"offset index {path} is unreadable ({err}); delete it to read the tar "
                                "without it, or convert the data again") from None
    size = Path(shard).stat().st_size
    if size != tar_bytes:
        raise tarfile.ReadError(f"offset index {path} is for a {tar_bytes}-byte tar, the shard has {size}: "
                                "shard changed after conversion; convert the data again")
    return members


def _octal(field: bytes) -> int | None:
    """A tar header's octal number field, or None when it holds none."""
    try:
        return int(field.split(b"\0", 1)[0].strip(), 8)
    except ValueError:
        return None


def _checked_data(block: memoryview, start: int, name: str, size: int, shard, path: Path) -> bytes:
    """The member's bytes at `start` (its data) in `block`, after checking the header before it:
    its checksum (the sum of its bytes, the checksum field counted as spaces), name and size."""
    header = bytes(block[start - _HEADER:start])
    ok = (len(header) == _HEADER and len(block) >= start + size
          and _octal(header[148:156]) == sum(header[:148]) + 8 * 32 + sum(header[156:])
          and name.encode().endswith(header[:100].split(b"\0", 1)[0] or b"\0")
          and _octal(header[124:136]) == size)
    if not ok:
        raise tarfile.ReadError(f"{shard}: member {name} is not where {path} says: the index disagrees "
                                "with the tar (shard changed after conversion); convert the data again")
    return bytes(block[start:start + size])


def read_indexed(shard: str | os.PathLike, members: list[list], read_exts: frozenset[str]
                 ) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {extension: bytes}) per sample, in order, like reading the tar with tarfile; members
    with other extensions map to None and are not read unless they sit between wanted ones."""
    path = index_path(shard)
    with open(shard, "rb", buffering=0) as file:
        for key, group in groupby(members, key=lambda m: m[0].partition(".")[0]):
            group = list(group)
            wanted = [m for m in group if m[0].partition(".")[2] in read_exts]
            files: dict[str, bytes | None] = {m[0].partition(".")[2]: None for m in group}
            if wanted:
                # One read per sample: from the first wanted header to the last wanted byte.
                first = wanted[0][1] - _HEADER
                file.seek(first)
                block = memoryview(file.read(wanted[-1][1] + wanted[-1][2] - first))
                for name, offset, size in wanted:
                    files[name.partition(".")[2]] = _checked_data(block, offset - first, name, size, shard, path)
            yield key, files
