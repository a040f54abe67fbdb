-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines FINAL and update_status(mkey, id, status_prefix)
-- Shared Lua: a message's status from its recipients' states, kept in the status index.
-- queued while any recipient is not final; then delivered|bounced|expired|suppressed when all
-- ended alike, else partial. status_prefix: Keys.status_index_prefix (P idx:status:), from the
-- script's ARGV.
local FINAL = {delivered = true, bounced = true, expired = true, suppressed = true, deleted = true}
local function update_status(mkey, id, status_prefix)
  local n = tonumber(redis.call('HGET', mkey, 'rcpt_count') or '0')
  if n == 0 then return end
  local names = {}
  for k = 0, n - 1 do names[#names + 1] = 'state:' .. k end
  local states = redis.call('HMGET', mkey, unpack(names))
  local status = nil
  for _, st in ipairs(states) do
    if not st or not FINAL[st] then status = 'queued'; break end
    if st == 'deleted' then st = 'suppressed' end
    if status == nil then status = st elseif status ~= st then status = 'partial' end
  end
  local old = redis.call('HGET', mkey, 'status')
  if old ~= status then
    local received = redis.call('HGET', mkey, 'received_at')
    if old then redis.call('ZREM', status_prefix .. old, id) end
    redis.call('ZADD', status_prefix .. status, received, id)
    redis.call('HSET', mkey, 'status', status)
  end
end
