-- KEYS: queue:domains, queue:d:<domain>; ARGV: domain
-- Returns {jobs in the domain queue, jobs made due earlier}.
--#include _domain_min

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
for _, job in ipairs(later) do
  redis.call('ZADD', KEYS[2], 'XX', now, job)
end
update_domain(KEYS[1], KEYS[2], ARGV[1])
return {redis.call('ZCARD', KEYS[2]), #later}
