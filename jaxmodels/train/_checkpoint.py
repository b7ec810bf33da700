import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
from jaxtyping import PyTree


_MAGIC = b"JAXMODELS-CKPT\x01"


def save_checkpoint(
    path: str | os.PathLike, tree: PyTree, meta: dict[str, Any]
) -> None:
    """Write `tree` (its array leaves) and the JSON-able `meta` to `path`, atomically.

    The file is written to a temporary file in the same folder, flushed and fsynced,
    then renamed over `path`, so a reader (or a resumed run after a crash, SIGKILL
    included) sees either the previous checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(meta).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            eqx.tree_serialise_leaves(f, tree)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at `path`, without reading its arrays."""
    with open(path, "rb") as f:
        return _read_header(f, path)


def load_checkpoint(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict]:
    """Read a checkpoint written by `save_checkpoint`.

    **Arguments:**

    - `path`: the checkpoint file.
    - `like`: a pytree with the same structure, shapes and dtypes as the saved one.

    **Returns:** `(tree, meta)`.

    **Raises:** `ValueError` if the file is not a jaxmodels checkpoint or does not match
    `like`.
    """
    with open(path, "rb") as f:
        meta = _read_header(f, path)
        try:
            tree = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:  # equinox raises several types for a mismatch
            raise ValueError(
                f"The checkpoint {str(path)!r} does not match the model and optimiser "
                f"given (different structure, shapes or dtypes): {e}"
            ) from e
    return tree, meta


def _read_header(f, path) -> dict[str, Any]:
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ValueError(f"{str(path)!r} is not a jaxmodels checkpoint.")
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n).decode())
