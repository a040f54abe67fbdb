-- KEYS: (mailrelay.store.scripts.SETTLE_KEYS) queue:unsettled, queue:domains, idx:time,
--       events (for the settlements), then every message's enqueue.lua keys, one message
--       after the other
-- ARGV: (positions from mailrelay.store.scripts.ENQUEUE_BATCH_ARGV) the enqueue.lua arguments
--       every message of a Storage shares (ENQUEUE_SHARED_ARGV: owner, the key
--       prefixes of SETTLE_ARGV, retention, body TTL), then the number of settlement values
--       ('settlements') and those values (pairs of action and message id, run with _settle
--       after the messages: the acknowledgements settled since the last call ride on this one), then per
--       message the number of its keys, the number of its own arguments, then its enqueue.lua
--       arguments without the shared ones.
-- Several messages queued in one call (see Storage._enqueue_batched): enqueue.lua for each,
-- in order; one failing (e.g. OOM) does not stop the others. On a full Redis (maxmemory,
-- noeviction) every message of the call is refused with OOM and nothing of it is written: a
-- message's first write (RPUSH of its timeline) is its first command that needs memory, and
-- nothing runs before the messages (see below).
-- Returns one reply per message (what enqueue.lua returns, or 'ERR <error>'), then _settle's
-- result per settlement.
--#include _count
--#include _domain_min
--#include _settle

local function enqueue(KEYS, ARGV)
--#include _enqueue_body

end
local s = tonumber(ARGV[${enqueue_batch.settlements}])
local results = {}
local k, a = ${settle_keys.#} + 1, ${enqueue_batch.#} + 1 + s
while a <= #ARGV do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local message_keys = {}
  for j = 1, nk do message_keys[j] = KEYS[k + j - 1] end
  -- the message's own arguments (ARGV[a + 2] on) around the shared ones (ARGV[1] on), which
  -- are contiguous in enqueue.lua's ARGV, from position ENQUEUE_SHARED_FIRST on
  local message_args = {}
  for j = 1, ${ENQUEUE_SHARED_FIRST} - 1 do message_args[j] = ARGV[a + 1 + j] end
  for j = 1, ${enqueue_shared.#} do message_args[${ENQUEUE_SHARED_FIRST} - 1 + j] = ARGV[j] end
  for j = ${ENQUEUE_SHARED_FIRST}, na do message_args[j + ${enqueue_shared.#}] = ARGV[a + 1 + j] end
  local ok, result = pcall(enqueue, message_keys, message_args)
  if not ok then
    local err = (type(result) == 'table' and result.err) or tostring(result)
    -- a replica (demoted primary) refuses every write, so nothing of this batch is stored:
    -- the call itself fails, and the Sentinel follower sees READONLY and reconnects
    if string.find(err, 'READONLY', 1, true) then return redis.error_reply(err) end
    result = 'ERR ' .. err
  end
  results[#results + 1] = result
  k = k + nk
  a = a + 2 + na
end
-- the settlements after the messages: a full Redis (maxmemory) refuses a script's first write
-- that needs memory, but once the script has written anything it lets the rest through; the
-- settlements begin with a write that needs none (ZREM), so run first they would let every
-- message of the call in past maxmemory. Run after, they still complete on a full Redis.
if s > 0 then
  local names = settle_names(KEYS, ARGV, ${enqueue_batch.msg_prefix})
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for k = ${enqueue_batch.#} + 1, ${enqueue_batch.#} + s, 2 do
    results[#results + 1] = settle(names, ARGV[${enqueue_batch.owner}], ARGV[k], ARGV[k + 1], now)
  end
end
return results
