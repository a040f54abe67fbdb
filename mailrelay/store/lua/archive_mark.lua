-- KEYS: events
-- ARGV: consumer group, msg key prefix, the number of messages n, then n pairs of message id
--       and archived timeline length, then the stream entry ids to acknowledge
-- Once the archive committed a batch: each message's hash records how much of its timeline is
-- archived ('archived': only ever raised, and only in a hash that still exists, so an expired
-- or deleted message is not brought back as a stray hash), and the batch's entries are
-- acknowledged in the group. Returns the number of entries acknowledged.
local msg_prefix = ARGV[2]
local last_pair = 3 + 2 * tonumber(ARGV[3])
for k = 4, last_pair, 2 do
  local mkey = msg_prefix .. ARGV[k]
  if redis.call('EXISTS', mkey) == 1 then
    local length = tonumber(ARGV[k + 1])
    local archived = tonumber(redis.call('HGET', mkey, 'archived') or '-1')
    if length > archived then
      redis.call('HSET', mkey, 'archived', length)
    end
  end
end
local acked = 0
local k = last_pair + 1
while k <= #ARGV do  -- in slices: unpack() of thousands of values overflows Lua's C stack
  local ids = {}
  for j = k, math.min(k + 999, #ARGV) do ids[#ids + 1] = ARGV[j] end
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  k = k + 1000
end
return acked
