"""The merge task's request class: unclaimable jobs are dropped in the main process (service.delivery)."""

from __future__ import annotations

from celery.worker.request import Request

from service.delivery import worth_running
from service.settings import get_settings


class MergeRequest(Request):
    def revoked(self) -> bool:
        if super().revoked():
            return True
        if worth_running(get_settings().database_url, self.id):
            return False
        self._announce_revoked("not claimable", False, None, False)  # acked; no pool process used
        return True
