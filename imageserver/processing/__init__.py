"""Image work in worker subprocesses: AMP commands, the worker, its pyvips operations, the pool."""
