"""Loss normalizers that mean the same on one device and on R replicas.

A detector's loss divides a sum over its sampled ROIs, foreground masks or labelled pixels by
their count. Under tf.distribute each replica sees only its share of the global batch, so a
per-replica count would weight the replicas' examples unequally (a replica with few ROIs would
count double). `global_count` replaces the count by the global batch's count divided by the
replica count: each replica's loss, scaled by 1/R and summed over the replicas (what
`LossDictTraining` and the optimizer do), is then the global batch's sum over its global count,
exactly the loss one device computes on the whole batch.
"""

import tensorflow as tf


def global_count(count):
    """`count` (a scalar) summed over the replicas and divided by their number; `count` itself
    outside a multi-replica step. Carries no gradient."""
    count = tf.stop_gradient(tf.cast(count, tf.float32))
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return count
    return context.all_reduce(tf.distribute.ReduceOp.SUM, count) / float(context.num_replicas_in_sync)
