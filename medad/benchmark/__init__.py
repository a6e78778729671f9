"""The engine: registries, config, job matrix, executors, metrics and run-folder I/O."""
