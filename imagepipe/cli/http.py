"""The command line's HTTP session with the front."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# A kept-alive connection the server has just closed surfaces as "Remote end closed connection"
# on the next request. Idempotent requests (GET, HEAD...) are tried again on a new connection;
# a POST is never repeated, so an upload is never made twice.
_RETRY = Retry(total=3, connect=3, read=2, status=0, backoff_factor=0.2,
               allowed_methods=Retry.DEFAULT_ALLOWED_METHODS, raise_on_status=False)


def new_session() -> requests.Session:
    """A session that retries idempotent requests on a dropped or refused connection."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=_RETRY)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
