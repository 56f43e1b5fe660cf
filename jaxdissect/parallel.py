"""The device mesh every sharded computation uses: one 'batch' axis over all devices of all hosts.

Samples are addressed by a global index. Sample i's latent depends only on
(seed, i), so results do not depend on the device or host count. Each host
builds only the rows of a global batch that live on its own devices
(`global_batch`), and reductions over the batch axis are explicit `psum`s in
`shard_map` (see jaxdissect.stats).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdissect.errors import UserError

BATCH = "batch"


@functools.lru_cache(maxsize=None)
def batch_mesh():
    """A 1-D mesh over every device of every process.

    The axis is Auto: inside plain `jit` the compiler partitions per-sample
    work (convolutions, gathers, loops) along the sharded batch by itself.
    """
    return Mesh(np.array(jax.devices()), (BATCH,), axis_types=(AxisType.Auto,))


def batch_sharding(ndim):
    """Sharding of an array whose leading axis is the batch."""
    return NamedSharding(batch_mesh(), P(BATCH, *([None] * (ndim - 1))))


def replicated():
    return NamedSharding(batch_mesh(), P())


def batch_multiple():
    """Global batch sizes must be a multiple of this (the device count)."""
    return batch_mesh().size


def check_batch_size(batch_size):
    """UserError unless `batch_size` is a multiple of the device count."""
    if batch_size % batch_multiple():
        raise UserError(f"batch size {batch_size} must be a multiple of the {batch_multiple()} devices")


def one_program_at_a_time(result):
    """Waits for `result` when several processes share the mesh (no-op in one process), before the
    caller dispatches its next program.

    XLA's CPU runtime runs consecutive programs concurrently; two programs'
    gloo all-reduces in flight on one process can pair with the wrong ones
    on another, and both processes then wait forever (measured: one hang in
    three runs of tests/test_multihost.py under load).
    """
    if jax.process_count() > 1:
        jax.block_until_ready(result)
    return result


def process_zero_decides(flag):
    """Process 0's `flag` (a bool), on every process: for decisions such as when to checkpoint, which each
    process's own clock would make differently."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def wait_for_all_processes(name):
    """Blocks until every process reaches the point called `name` (nothing to wait for in one process),
    e.g. before reading back files that process 0 writes."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def global_batch(shape, dtype, rows_fn):
    """A batch-sharded global array; `rows_fn(start, stop)` makes rows [start, stop) on this host.

    Only the rows held by this process's devices are ever computed.
    """
    def shard(index):
        rows = index[0]
        start, stop, _ = rows.indices(shape[0])
        return np.asarray(rows_fn(start, stop), dtype)
    return jax.make_array_from_callback(shape, batch_sharding(len(shape)), shard)


def latents(seed, start, stop, latent_size):
    """The latents of global samples [start, stop) as numpy: row i depends only on (seed, i)."""
    return np.asarray(_latents(jnp.uint32(seed), jnp.arange(start, stop, dtype=jnp.uint32), latent_size))


def latents_at(seed, index, latent_size):
    """The latents of global samples `index` (N,), traceable: call it inside a jitted step, so that
    no batch waits for its latents to come back to the host (negative indices: padding rows)."""
    return _latents(jnp.asarray(seed, jnp.uint32), index.astype(jnp.uint32), latent_size)


@functools.partial(jax.jit, static_argnums=2)
def _latents(seed, indices, latent_size):
    key = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (latent_size,)))(indices)


def global_latents(seed, start, batch_size, latent_size):
    """The batch-sharded latents of global samples [start, start + batch_size), built on the host (for
    loops that read every batch back anyway; jitted steps take `global_indices` and `latents_at`)."""
    return global_batch((batch_size, latent_size), np.float32,
                        lambda a, b: latents(seed, start + a, start + b, latent_size))


def global_rows(values, start, batch_size, pad):
    """The batch-sharded int32 global array of host `values[start:start + batch_size]`, filled up to
    batch_size with `pad` (e.g. -1 for padding sample indices)."""
    chunk = np.asarray(values[start:start + batch_size])
    rows = np.concatenate([chunk, np.full(batch_size - len(chunk), pad, chunk.dtype)])
    return global_batch((batch_size,), np.int32, lambda a, b: rows[a:b])


def global_indices(start, batch_size, limit):
    """The batch-sharded global sample indices [start, start + batch_size), -1 from `limit` on."""
    def rows(a, b):
        index = np.arange(start + a, start + b)
        return np.where(index < limit, index, -1)
    return global_batch((batch_size,), np.int32, rows)


def to_host(x):
    """A global array as one numpy array on every process (a gather across hosts if needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
