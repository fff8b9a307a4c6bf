"""The counter as a CGI script: one process per request, as a web server runs it.

The request comes in the environment (``REQUEST_METHOD``, ``PATH_INFO``, ``HTTP_COOKIE``...), the
response goes to stdout; ``LOCKSTORE_TEST_PATH`` names the store.
"""

from __future__ import annotations

import os
import sys
from wsgiref.handlers import CGIHandler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.web_apps.apps import make_wsgi_app

if __name__ == "__main__":
    CGIHandler().run(make_wsgi_app())
