-- KEYS: dkim:domains, dkim:version, dkim:checks; ARGV: domain, expected record ('' = absent),
--       new record ('' = delete the domain and its last check)
-- Returns 1 when written, 0 when the stored record was not the expected one.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('INCR', KEYS[2])
return 1
