-- KEYS: webhook queue; ARGV: now_ms, limit, lease_until_ms, owner, job key prefix
-- Leases up to `limit` due jobs: each one's score becomes its lease expiry, so a job whose
-- daemon died is due again then. Returns flat: job id, url, hook index, payload, attempts,
-- event, message id, rcpt index, recipient per job. Ids whose hash is gone are dropped.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local jkey = ARGV[5] .. id
  local row = redis.call('HMGET', jkey, 'url', 'hook', 'payload', 'attempts', 'event',
                         'message_id', 'rcpt', 'recipient')
  if row[1] then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), id)
    redis.call('HSET', jkey, 'owner', ARGV[4])
    out[#out + 1] = id
    for k = 1, 8 do out[#out + 1] = row[k] or '' end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
