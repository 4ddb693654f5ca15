"""A typed Python client for the fda-merge service (httpx only: no torch, no service code).

from fdamerge_client import Client
client = Client("http://127.0.0.1:8000", api_key="fdm_…")
job = client.submit({"method": "ties", "base_model": "s3://models/base", "models": [...]})
job = client.wait(job.id)            # polls until succeeded / failed / cancelled
for event in client.events(job.id):  # paged history
    print(event.kind, event.message)
"""

from fdamerge_client.client import ApiError, Client, Unreachable
from fdamerge_client.models import Artifact, Event, Job

__all__ = ["ApiError", "Artifact", "Client", "Event", "Job", "Unreachable"]
