-- KEYS, ARGV: those of enqueue.lua (a shared piece: enqueue, enqueue_batch and, through
--       enqueue, dedupe_enqueue --#include it; it needs _count)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[${enqueue.deadline_ms}]) then
  return 'LATE'
end
local mkey = KEYS[${enqueue_keys.msg}]
if redis.call('EXISTS', mkey) == 1 then
  return 'EXISTS'
end
local id = ARGV[${enqueue.id}]
local minute_prefix = ARGV[${enqueue.stats_minute_prefix}]
local hour_prefix = ARGV[${enqueue.stats_hour_prefix}]
local rcpt_index_prefix = ARGV[${enqueue.rcpt_index_prefix}]
local timeline = KEYS[${enqueue_keys.timeline}]
local time_index = KEYS[${enqueue_keys.time_index}]
local retention = tonumber(ARGV[${enqueue.retention_s}])
local horizon = now - retention * 1000
local hash = {}
for name, value in pairs(cjson.decode(ARGV[${enqueue.fields}])) do
  hash[#hash + 1] = name
  hash[#hash + 1] = value
end
local body = ARGV[${enqueue.body}]
local pos = ${enqueue.#} + 1  -- then per recipient: address, queued event
local i = 0
local seen = {}
while pos <= #ARGV do
  hash[#hash + 1] = 'rcpt:' .. i
  hash[#hash + 1] = ARGV[pos]
  hash[#hash + 1] = 'state:' .. i
  hash[#hash + 1] = 'queued'
  redis.call('RPUSH', timeline, ARGV[pos + 1])
  local rkey = rcpt_index_prefix .. string.lower(ARGV[pos])
  if not seen[rkey] then
    seen[rkey] = true
    redis.call('ZADD', rkey, now, id)
    redis.call('ZREMRANGEBYSCORE', rkey, '-inf', horizon)
    redis.call('EXPIRE', rkey, retention)
  end
  i = i + 1
  pos = pos + 2
end
hash[#hash + 1] = 'rcpt_count'
hash[#hash + 1] = i
hash[#hash + 1] = 'received_at'
hash[#hash + 1] = now
hash[#hash + 1] = 'status'
hash[#hash + 1] = 'queued'
hash[#hash + 1] = 'unsettled'
hash[#hash + 1] = ARGV[${enqueue.owner}]
redis.call('HSET', mkey, unpack(hash))
redis.call('EXPIRE', mkey, retention)
redis.call('SET', KEYS[${enqueue_keys.body}], body, 'EX', tonumber(ARGV[${enqueue.body_ttl_s}]))
redis.call('EXPIRE', timeline, retention)
redis.call('ZADD', KEYS[${enqueue_keys.unsettled}], now, id)
redis.call('ZADD', time_index, now, id)
redis.call('ZREMRANGEBYSCORE', time_index, '-inf', horizon)
redis.call('ZADD', KEYS[${enqueue_keys.queued_status_index}], now, id)
if ARGV[${enqueue.tag}] ~= '' then
  local tkey = ARGV[${enqueue.tag_index_prefix}] .. ARGV[${enqueue.tag}]
  redis.call('ZADD', tkey, now, id)
  redis.call('ZREMRANGEBYSCORE', tkey, '-inf', horizon)
  redis.call('EXPIRE', tkey, retention)
end
redis.call('XADD', KEYS[${enqueue_keys.events}], '*', 'type', 'queued', 'msg', id, 'at', now)
count(minute_prefix, hour_prefix, now, 'accepted', 1)
count(minute_prefix, hour_prefix, now, 'recipients', i)
return 'OK ' .. (redis.call('GET', KEYS[${enqueue_keys.suppressed_version}]) or '0')
