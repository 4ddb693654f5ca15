"""worker: filled in by the service issue (#4). Imports service, never api."""
