"""Drivers: every way of running a fit is a loop over the one EM kernel (:mod:`jaxem.core.kernel`).

- :mod:`~jaxem.drivers.fit`: one fit (``lax.while_loop`` over ``step``) and restarts (``vmap``);
- :mod:`~jaxem.drivers.prune`: restarts in rounds, lagging lanes dropped;
- :mod:`~jaxem.drivers.sharded`: rows sharded over devices and hosts (``shard_map``, ``psum``);
- :mod:`~jaxem.drivers.stream`: rows streamed from the host, one step per pass, checkpoints;
- :mod:`~jaxem.drivers.online`: the online kernel over mini-batches;
- :mod:`~jaxem.drivers.bound`: the EM bound traced step by step.
"""
