"""Which elements of a training stream one input pipeline reads: the per-worker shard and
the resume offset of `kseg train` under tf.distribute.

kseg shards explicitly (`strategy.distribute_datasets_from_function`, auto-sharding off).
Every pipeline builds the same shuffled, seeded stream of cheap elements (indices or cached
decoded files plus their augmentation seeds); the global batch is a run of consecutive
elements of that stream, and pipeline i keeps its own block of rows of every global batch
before the expensive work (reading, resizing, augmenting) happens. So:

- each worker decodes only its own examples (no N-fold redundant reading, as
  `AutoShardPolicy.DATA` would do), and the shards are disjoint and cover the data;
- a global batch holds the same examples, with the same augmentation, whatever the number of
  workers and replicas: N workers train like one worker with the same global batch;
- a resumed run skips the elements already trained on, so it sees what the uninterrupted
  run would have seen.

`AutoShardPolicy.FILE` does not apply: the streams come from in-memory lists, not files.
"""

from kseg.data.errors import DataError


def check_shard(shard, where):
    """Checks `shard` = None or (index, count, block) with 0 <= index < count and block >= 1."""
    if shard is None:
        return None
    ok = (isinstance(shard, (list, tuple)) and len(shard) == 3 and all(isinstance(v, int) for v in shard)
          and 0 <= shard[0] < shard[1] and shard[2] >= 1)
    if not ok:
        raise DataError(f"{where}: shard={shard!r}, expected None or (index, count, block) ints with "
                        "0 <= index < count and block >= 1")
    return tuple(shard)


def select_elements(ds, shard=None, skip=0):
    """Keeps one pipeline's elements of a stream, after skipping the ones already trained on.

    Args:
        ds: the full element stream (the same on every pipeline).
        shard: None (keep all) or (index, count, block): of every run of `count * block`
            consecutive elements, keep the `index`-th block of `block` (pipeline `index` of
            `count`, feeding `block` elements per global batch).
        skip: elements of this pipeline's own stream to drop first (a resumed run).

    Returns:
        The selected stream.
    """
    if shard is not None and shard[1] > 1:
        index, count, block = shard
        ds = ds.enumerate().filter(lambda position, element: (position // block) % count == index)
        ds = ds.map(lambda position, element: element)
    if skip:
        ds = ds.skip(skip)
    return ds
