"""Stores on a server: Redis (``redis.py``) and PostgreSQL (``postgres.py``) over one template (``base.py``).

Each server module gives only its primitives (lock, commit, scan, touch); the settings, their validation,
the codec rules, redaction and the shared reads live in :mod:`lockstore.remote.base`. The modules import
their client libraries (the ``[redis]`` and ``[postgres]`` extras), so nothing here is imported by
``import lockstore``: :func:`lockstore.open` imports the one a URL names.
"""
