"""The benchmark harness of issue 8: ours against the pyvips limit, static.File and thumbor."""
