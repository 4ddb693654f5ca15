"""api: filled in by the service issue (#4). Imports service, never worker (enqueues by task name)."""
