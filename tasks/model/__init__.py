"""What is built: the matrix and its settings, each cell's files, one run's plan."""
