"""The embedded broker: kombu's filesystem transport with atomic writes.

kombu creates the message file and only then writes it, so a worker polling the folder can take
an empty file and die on `JSONDecodeError` (seen: it took the embedded reaper and scheduler down).
Here a message is written under a name the reader ignores and renamed into place when complete.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class AtomicChannel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs) -> None:  # type: ignore[override]  # kombu's own stubs disagree
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}")  # no '.<queue>.msg' suffix
        with open(partial, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicChannel
