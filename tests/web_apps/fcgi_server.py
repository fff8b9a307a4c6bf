"""The counter as a FastCGI application served by flup's threaded WSGI server.

Started the way a web server starts a FastCGI application: the listening socket is file
descriptor 0 (``FCGI_LISTENSOCK_FILENO``). Every request runs in a thread of this one process, so
the request-long session lock must keep threads apart as well as processes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from flup.server.fcgi import WSGIServer

from tests.web_apps.apps import make_wsgi_app

if __name__ == "__main__":
    WSGIServer(make_wsgi_app(), debug=False, maxThreads=16).run()
