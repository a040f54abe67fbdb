-- KEYS: auth:fail:<client>; ARGV: now (ms), period (ms), limit, a new member.
-- A sliding window: members older than the period go; at the limit, nothing is added and
-- the reply is the milliseconds until the oldest leaves; otherwise the member is added, 0.
local now, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] == nil then
    return period
  end
  return math.max(1, tonumber(oldest[2]) + period - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], period)
return 0
