-- KEYS: queue:domains, leases; ARGV: now_ms, owner ("" = any: expired leases), msg key prefix,
--       domain queue prefix, then jobs (only with an owner: hand these back now)
-- Puts jobs back into their domain queue, due now.
--#include _domain_min

local jobs
if ARGV[2] == '' then
  jobs = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
else
  jobs = {}
  for k = 5, #ARGV do jobs[#jobs + 1] = ARGV[k] end
end
local n = 0
for _, job in ipairs(jobs) do
  local dot = string.find(job, '.', 1, true)
  local id, i = string.sub(job, 1, dot - 1), string.sub(job, dot + 1)
  local mkey = ARGV[3] .. id
  local owner = redis.call('HGET', mkey, 'owner:' .. i)
  if ARGV[2] == '' or owner == ARGV[2] then
    redis.call('ZREM', KEYS[2], job)
    local rcpt = redis.call('HGET', mkey, 'rcpt:' .. i)
    if rcpt and owner then
      local domain = domain_of(rcpt)
      local dkey = ARGV[4] .. domain
      redis.call('ZADD', dkey, tonumber(ARGV[1]), job)
      update_domain(KEYS[1], dkey, domain)
      redis.call('HDEL', mkey, 'owner:' .. i)
      redis.call('HSET', mkey, 'state:' .. i, 'queued')
      n = n + 1
    end
  end
end
return n
