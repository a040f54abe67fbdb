-- KEYS: queue:domains, leases, msg, timeline, events, then queue:d:<domain> per chosen recipient
-- ARGV: id, then per chosen recipient: index, domain, deleted event (JSON)
-- Returns the number of jobs dropped, or -1 when the message does not exist. The jobs of an
-- unsettled message (in no queue yet) are dropped too: its confirmation skips them.
--#include _domain_min

if redis.call('EXISTS', KEYS[3]) == 0 then
  return -1
end
local unsettled = redis.call('HEXISTS', KEYS[3], 'unsettled') == 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
local k = 6
for p = 2, #ARGV, 3 do
  local i, domain, event = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local dkey = KEYS[k]
  k = k + 1
  local job = ARGV[1] .. '.' .. i
  local queued = redis.call('ZREM', dkey, job)
  local leased = redis.call('ZREM', KEYS[2], job)
  if queued == 1 then
    update_domain(KEYS[1], dkey, domain)
  end
  if queued + leased > 0 or (unsettled and redis.call('HGET', KEYS[3], 'state:' .. i) == 'queued') then
    redis.call('HDEL', KEYS[3], 'owner:' .. i)
    redis.call('HSET', KEYS[3], 'state:' .. i, 'deleted')
    redis.call('RPUSH', KEYS[4], event)
    redis.call('XADD', KEYS[5], '*', 'type', 'deleted', 'msg', ARGV[1],
               'rcpt', i, 'at', now)
    n = n + 1
  end
end
return n
