"""Storage engines: embedded (lmdb, shelve, memory) and remote (redis, postgres)."""
