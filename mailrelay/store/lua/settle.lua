-- KEYS: queue:unsettled; ARGV: key prefix (P), owner, events_maxlen, then pairs of action
-- ('confirm' or 'cancel') and message id. Returns _SETTLE's result per pair, in order.
--#include _count
--#include _domain_min
--#include _settle

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for k = 4, #ARGV, 2 do
  out[#out + 1] = settle(ARGV[1], ARGV[2], ARGV[k], ARGV[k + 1], now, ARGV[3])
end
return out
