-- KEYS: cluster, cluster:<owner>, meta:version; ARGV: owner, ttl_ms, field/value pairs...
-- Returns {Redis time in ms, data version or ''}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local fields = {'beat', now}
for k = 3, #ARGV do fields[#fields + 1] = ARGV[k] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
return {now, redis.call('GET', KEYS[3]) or ''}
