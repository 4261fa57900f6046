"""OS plumbing every stage shares; none of it knows about images."""
