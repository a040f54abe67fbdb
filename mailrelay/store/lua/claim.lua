-- KEYS: queue:domains, queue:d:<domain>, leases, suppressed
-- ARGV: domain, now_ms, limit, lease_until_ms, owner, msg key prefix, body key prefix,
--       body budget (bytes of stored bodies returned inline, in all)
-- Returns flat list per claimed job: job, sender, rcpt, attempts, received_at, suppression,
-- body. suppression: the entry of the recipient in the suppression list (its address
-- ASCII-lowercased), "" when it has none, false when the address is not ASCII (Lua's lower is
-- not Python's: the caller looks it up). body: the stored (compressed) body, for the first job
-- of each message while the budget lasts, else false (the caller reads it).
--#include _domain_min

local jobs = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local budget = tonumber(ARGV[8])
local seen = {}
for _, job in ipairs(jobs) do
  redis.call('ZREM', KEYS[2], job)
  local dot = string.find(job, '.', 1, true)
  local id, i = string.sub(job, 1, dot - 1), string.sub(job, dot + 1)
  local mkey = ARGV[6] .. id
  local row = redis.call('HMGET', mkey, 'sender', 'rcpt:' .. i, 'attempts:' .. i, 'received_at')
  if row[2] then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), job)
    redis.call('HSET', mkey, 'owner:' .. i, ARGV[5], 'state:' .. i, 'delivering')
    local suppression = false
    if not string.find(row[2], '[\128-\255]') then
      suppression = redis.call('HGET', KEYS[4], string.lower(row[2])) or ''
    end
    local body = false
    if not seen[id] and budget > 0 then
      seen[id] = true
      local bkey = ARGV[7] .. id
      local size = redis.call('STRLEN', bkey)
      if size > 0 and size <= budget then
        body = redis.call('GET', bkey)
        budget = budget - size
      end
    end
    out[#out + 1] = job
    out[#out + 1] = row[1]
    out[#out + 1] = row[2]
    out[#out + 1] = row[3] or '0'
    out[#out + 1] = row[4]
    out[#out + 1] = suppression
    out[#out + 1] = body
  end
end
update_domain(KEYS[1], KEYS[2], ARGV[1])
return out
