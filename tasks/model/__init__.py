"""What is built: the matrix and its settings schema, the architecture registry,
the records between stages, each cell's files, one run's plan, versions."""
