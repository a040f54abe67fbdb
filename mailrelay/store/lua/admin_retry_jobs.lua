-- KEYS: queue:domains, then queue:d:<domain> per recipient index; ARGV: id, then per recipient: domain
-- Returns {jobs found in their domain queue, jobs made due earlier}.
--#include _domain_min

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total, moved = 0, 0
for k = 2, #KEYS do
  local job = ARGV[1] .. '.' .. (k - 2)
  local due = redis.call('ZSCORE', KEYS[k], job)
  if due then
    total = total + 1
    if tonumber(due) > now then
      redis.call('ZADD', KEYS[k], 'XX', now, job)
      moved = moved + 1
    end
    update_domain(KEYS[1], KEYS[k], ARGV[k])
  end
end
return {total, moved}
