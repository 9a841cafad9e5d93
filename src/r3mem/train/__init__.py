"""Training R³Mem: configuration, hierarchical data mixture and the training loop."""
