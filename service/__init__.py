"""What the API and the worker share: settings, storage adapters, (later) database and job lifecycle.

Imports fda_core; never api or worker.
"""
