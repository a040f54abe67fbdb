-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines unindex_message(mkey, id, time_index, rcpt_prefix, tag_prefix,
--       status_prefix)
-- Shared Lua: takes message id out of the Redis search indexes (time, each recipient, its tag,
-- its status), reading what it was indexed under from its hash mkey (which must still exist).
local function unindex_message(mkey, id, time_index, rcpt_prefix, tag_prefix, status_prefix)
  local n = tonumber(redis.call('HGET', mkey, 'rcpt_count') or '0')
  local row = redis.call('HMGET', mkey, 'tag', 'status')
  for i = 0, n - 1 do
    local rcpt = redis.call('HGET', mkey, 'rcpt:' .. i)
    if rcpt then redis.call('ZREM', rcpt_prefix .. string.lower(rcpt), id) end
  end
  redis.call('ZREM', time_index, id)
  if row[2] then redis.call('ZREM', status_prefix .. row[2], id) end
  if row[1] and row[1] ~= '' then redis.call('ZREM', tag_prefix .. row[1], id) end
end
