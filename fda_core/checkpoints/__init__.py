"""Checkpoint I/O: sources, header validation, tensor reads and sharded writes."""
