"""Register the remote checkpoint sources fda_core cannot know about (s3://).

boto3 and its S3 client are loaded on the first s3:// URI, not at registration: a local merge
does not pay their ~0.2 s start-up.
"""

from __future__ import annotations

from fda_core.checkpoints.sources import CheckpointSource, register_scheme
from service.settings import Settings, get_settings


def register_s3(settings: Settings | None = None, retry_seconds: float | None = None) -> None:
    """Teach fda_core to open s3:// URIs with these settings (endpoint, region, cache folder); transient
    S3 errors are retried for `retry_seconds` (default: the settings' window; submit-time checks: short)."""
    resolved = settings or get_settings()
    window = resolved.transient_retry_seconds if retry_seconds is None else retry_seconds
    clients: list = []

    def open_s3(uri: str) -> CheckpointSource:
        from service.s3 import make_s3_client
        from service.s3_checkpoints import S3Source

        if not clients:
            clients.append(make_s3_client(resolved.s3_endpoint_url, resolved.s3_region))
        return S3Source(
            uri, clients[0], resolved.cache_dir, resolved.cache_max_bytes, resolved.limits.files_per_input, window
        )

    register_scheme("s3", open_s3)
