"""Entry point of one `--workers N` worker: `python -m shipyard.serving.worker_main`.

The supervisor (`serving.workers`) passes the resolved settings as JSON, the worker's index
and the file descriptor of its end of the link in the environment; the worker serves like
`shipyard serve` (its own signals, drain and logs) on the shared port. When the supervisor
dies, however it dies, the link closes and the worker drains itself (`serving.peers`).
"""

from __future__ import annotations

import os
import sys

from shipyard.errors import ShipyardError


def main() -> int:
    from shipyard.serving.logs import configure_logging
    from shipyard.serving.peers import INDEX_ENV, PeerLink
    from shipyard.serving.server import serve
    from shipyard.serving.settings import ServerSettings
    from shipyard.serving.workers import FD_ENV, SETTINGS_ENV

    settings = ServerSettings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    link = PeerLink(int(os.environ[FD_ENV]), int(os.environ[INDEX_ENV]))
    try:
        serve(settings=settings, link=link)
    except ShipyardError as exc:
        import logging

        logging.getLogger("shipyard.serving.server").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
