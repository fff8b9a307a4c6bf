"""Stores on a server: Redis and PostgreSQL over one template.

``base.py`` is the template (checks, settings, codec, warnings, the mapping API and ``edit()``, written once);
``meta.py`` the recorded settings and why none of them is trusted. ``redis.py`` and ``postgres.py`` give only
their primitives (connect, lock, commit, scan, touch, delete), with the server-side scripts in ``redis_lua.py``
and the PostgreSQL pool in ``postgres_pool.py``. The server modules import their client libraries (the
``[redis]`` and ``[postgres]`` extras), so nothing here is imported by ``import lockstore``:
:func:`lockstore.open` imports the one a URL names.
"""
