"""Each rank's own shard of a Parquet dataset, with the core's equal-steps policy.

Spark writes a DataFrame as ``part-*.parquet`` files of any sizes. Ranks must run the same number
of steps, so a rank's shard is not a set of files but a contiguous block of ``samples_per_rank``
rows of the whole dataset in file order (``core.sharding``: ceil(N / W) rows, the last block
wrapping around to the first rows). Only the files overlapping the block are read; row counts come
from the files' footers. Shuffle within the shard per epoch, as a local loader does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..core.context import current
from ..core.guards import UserError
from ..core.sharding import samples_per_rank


def read_shard(
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    *,
    rank: int | None = None,
    size: int | None = None,
):
    """This rank's rows of the Parquet dataset at ``path`` as a ``pyarrow.Table`` (rank and world
    size from the job, ``init()`` first, unless given)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if rank is None or size is None:
        ctx = current()
        rank, size = ctx.rank, ctx.size
    if not os.path.exists(path):
        raise UserError(
            f"Parquet dataset not found: {path} (the executors must see the path the driver "
            f"wrote: a shared file system or an object store)",
            collective=True,
        )
    fragments = sorted(
        ds.dataset(str(path), format="parquet").get_fragments(), key=lambda f: f.path
    )
    counts = [fragment.metadata.num_rows for fragment in fragments]
    total = sum(counts)
    if total == 0:
        raise UserError(f"Parquet dataset {path} has no rows", collective=True)
    per_rank = samples_per_rank(total, size)
    first = rank * per_rank % total
    spans = [(first, min(first + per_rank, total))]
    # the padded end of the last blocks: the dataset's first rows again
    if first + per_rank > total:
        spans.append((0, first + per_rank - total))
    pieces = []
    for lo, hi in spans:
        offset = 0
        for fragment, count in zip(fragments, counts):
            a, b = max(lo, offset), min(hi, offset + count)
            if a < b:
                pieces.append(fragment.to_table(columns=columns).slice(a - offset, b - a))
            offset += count
    return pa.concat_tables(pieces)
