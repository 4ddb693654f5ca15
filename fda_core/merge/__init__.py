"""The merge plan and its entry point `run_merge`."""
