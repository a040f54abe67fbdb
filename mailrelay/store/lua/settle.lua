-- KEYS: (mailrelay.store.scripts.SETTLE_KEYS) queue:unsettled, queue:domains, idx:time, events
-- ARGV: (positions from SETTLE_SCRIPT_ARGV) the key prefixes of SETTLE_ARGV (msg, body,
--       timeline, domain queue, recipient, tag and status index, minute and hour counters),
--       owner, then pairs of action ('confirm' or 'cancel') and message id.
-- Returns settle()'s result (see _settle) per pair, in order.
--#include _count
--#include _domain_min
--#include _settle

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = settle_names(KEYS, ARGV, ${settle.msg_prefix})
local owner = ARGV[${settle.owner}]
local out = {}
for k = ${settle.#} + 1, #ARGV, 2 do
  out[#out + 1] = settle(names, owner, ARGV[k], ARGV[k + 1], now)
end
return out
