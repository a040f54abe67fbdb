-- KEYS, ARGV: those of enqueue.lua (a shared piece: enqueue, enqueue_batch and, through
--       enqueue, dedupe_enqueue --#include it; it needs _count)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[${enqueue.deadline_ms}]) then
  return 'LATE'
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'EXISTS'
end
local id = ARGV[${enqueue.id}]
local idx = ARGV[${enqueue.index_prefix}]
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
  redis.call('RPUSH', KEYS[5], ARGV[pos + 1])
  local rkey = idx .. 'rcpt:' .. string.lower(ARGV[pos])
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
redis.call('HSET', KEYS[1], unpack(hash))
redis.call('EXPIRE', KEYS[1], retention)
redis.call('SET', KEYS[2], body, 'EX', tonumber(ARGV[${enqueue.body_ttl_s}]))
redis.call('EXPIRE', KEYS[5], retention)
redis.call('ZADD', KEYS[3], now, id)
redis.call('ZADD', idx .. 'time', now, id)
redis.call('ZREMRANGEBYSCORE', idx .. 'time', '-inf', horizon)
redis.call('ZADD', idx .. 'status:queued', now, id)
if ARGV[${enqueue.tag}] ~= '' then
  local tkey = idx .. 'tag:' .. ARGV[${enqueue.tag}]
  redis.call('ZADD', tkey, now, id)
  redis.call('ZREMRANGEBYSCORE', tkey, '-inf', horizon)
  redis.call('EXPIRE', tkey, retention)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[${enqueue.events_maxlen}], '*', 'type', 'queued', 'msg', id, 'at', now)
count(idx .. 'stats:', now, 'accepted', 1)
count(idx .. 'stats:', now, 'recipients', i)
return 'OK ' .. (redis.call('GET', KEYS[6]) or '0')
