"""The `fdamerge` command: a thin shell over fda_core and service."""
