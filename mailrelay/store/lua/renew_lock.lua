-- KEYS: a lock; ARGV: its token, its new time to live (seconds).
-- Returns 1 when the lock is still ours (its time to live renewed), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
