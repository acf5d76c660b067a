"""Whether the graph being traced will be compiled by XLA.

A few TensorFlow ops that kseg uses on the fast path have no XLA kernel (CropAndResize, the
Python call behind tf.numpy_function). Ops with two implementations (`kseg.ops.roi_align`,
`kseg.ops.matching`) ask `compiling_with_xla()` while they are traced and take their XLA path
inside `tf.function(jit_compile=True)`, which is what Keras' `compile(jit_compile=True)` (and
its default "auto" on a GPU) wraps the train, test and predict steps in.
"""

import tensorflow as tf

try:  # TensorFlow marks graphs traced for jit_compile with an XLA control-flow context.
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla_context
except ImportError:  # pragma: no cover - a TensorFlow without the helper: assume XLA, the safe side
    _in_xla_context = None


def compiling_with_xla():
    """True while tracing a function (or a function nested in one) compiled with XLA.

    Eager execution and plain tf.function graphs return False. Should TensorFlow stop
    providing the check, this returns True in every graph (the XLA paths run everywhere,
    only slower on some CPUs) and False when executing eagerly.

    Example:
    >>> compiling_with_xla()
    False
    >>> bool(tf.function(lambda: tf.constant(compiling_with_xla()), jit_compile=True)())
    True
    """
    if tf.executing_eagerly():
        return False
    if _in_xla_context is None:  # pragma: no cover
        return True
    return bool(_in_xla_context(tf.compat.v1.get_default_graph()))
