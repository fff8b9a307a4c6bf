"""The old Python session stores' APIs, as thin adapters over a lockstore ``Store``.

Each submodule reproduces one old API so that an application moves to lockstore by changing an
import, and gains multi-process safety on the way:

``lockstore.compat.session2``
    ``SessionStore`` with ``load_session`` / ``save_session`` / ``delete_session`` /
    ``has_session`` / ``iter_sessions`` / ``delete_old_sessions`` / ``setup`` and the
    ``is_multiprocess_safe`` / ``is_thread_safe`` flags of session2 and session3, plus
    ``ShelveSessionStore(filename)``, ``DirectorySessionStore(directory)`` and
    ``VolatileSessionStore()``.
``lockstore.compat.spyce``
    ``SpyceSession``: ``get`` / ``put`` / ``delete`` on the current session, created just in time.
``lockstore.compat.aquarium``
    ``SessionContainer``: ``open(sid=None)``, random cleanup every ``cleanup_frequency`` opens,
    ``adjust_time(delta_seconds)``.

None of them is a second engine: every read and write goes through the public ``Store`` API, so
the adapters inherit its locking, expiry, fork and crash guarantees. The submodules are imported
on demand; importing this package imports none of them.
"""

from __future__ import annotations

__all__ = ["aquarium", "session2", "spyce"]
