"""The server-side scripts of the Redis store: each runs atomically on the server, so a lock, a commit,
a touch or a sweep is one step there. Idempotent per lock token, so a retry after a lost reply is safe.
"""

from __future__ import annotations

from ..record import HEADER_SIZE

# KEYS: data, lock. ARGV: token, lock ttl (ms). Takes the lock unless another token holds it; returns
# {1, record} or {0, lock pttl}. Idempotent for one token, so a retry after a lost reply is safe.
ACQUIRE = """
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] and string.sub(cur, 1, 5) ~= 'done:' then
  return {0, redis.call('PTTL', KEYS[2])}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('GET', KEYS[1])}
"""

# KEYS: data, lock, wake, request lock. ARGV: token, op (w = write, d = delete, r = release only), record,
# ttl (ms, or '' for none), ttl of the done marker (ms), the request lock's token that must still hold its key
# ('' for none: fencing, see redis_locks), and optionally the header the record must still have ('' for none):
# a touch does not take the lock, and put_record_if must not write over one.
# Returns 1 (done), 2 (an earlier attempt of this commit was done), 3 (the record's header changed:
# released, nothing written), 4 (the request lock is no longer this holder's: released, nothing written) or
# 0 (the lock was lost: nothing written). A done commit leaves 'done:TOKEN' for a few seconds so that a retry
# learns it went through (and renews it: a write of the retry's own connection, which WAIT then covers).
# Every release pushes one wake-up on the wake list, where a waiter blocks (BLPOP) instead of polling.
COMMIT = f"""
local cur = redis.call('GET', KEYS[2])
if cur == 'done:' .. ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return 2
end
if cur ~= ARGV[1] then return 0 end
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
redis.call('PEXPIRE', KEYS[3], 2000)
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[6] then
  redis.call('DEL', KEYS[2])
  return 4
end
if ARGV[7] and redis.call('GETRANGE', KEYS[1], 0, {HEADER_SIZE - 1}) ~= ARGV[7] then
  redis.call('DEL', KEYS[2])
  return 3
end
if ARGV[2] == 'r' then
  redis.call('DEL', KEYS[2])
  return 1
end
if ARGV[2] == 'w' and ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
elseif ARGV[2] == 'w' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], 'done:' .. ARGV[1], 'PX', ARGV[5])
return 1
"""

# KEYS: a lock. ARGV: token, lease (ms). Extends the lease if the token still holds the lock: 1, else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: request lock. ARGV: token, lease (ms). Takes the lock unless another token holds it: {1} or
# {0, its pttl}. Idempotent for one token (a retry after a lost reply finds it taken by itself).
TAKE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
"""

# KEYS: request lock, its wake list. ARGV: token. Compare-and-delete, and one wake-up for a waiter: 1 if it
# was this token's, else 0 (lapsed: the key is someone else's now, or gone).
GIVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('PEXPIRE', KEYS[2], 2000)
return 1
"""

# KEYS: data. ARGV: old record, new record, ttl (ms, or '' for none). Compare-and-set for a touch.
RETIME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  return 1
end
return 0
"""

# KEYS: data. ARGV: header. Deletes the record if it still has that header (same times): for clean().
SWEEP = f"""
if redis.call('GETRANGE', KEYS[1], 0, {HEADER_SIZE - 1}) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: meta. ARGV: n, n field/value pairs that record a new store (n = 0: create none), then field/value
# pairs to record where absent in an existing one (the sweep rule of a store created before it was recorded). Returns
# the recorded fields, or the key's type if it is not a hash.
META = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return kind end
local n = tonumber(ARGV[1])
if kind == 'none' then
  if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * n)) end
else
  for i = 2 + 2 * n, #ARGV, 2 do
    redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('HGETALL', KEYS[1])
"""


__all__ = ["ACQUIRE", "COMMIT", "GIVE", "META", "RENEW", "RETIME", "SWEEP", "TAKE"]
