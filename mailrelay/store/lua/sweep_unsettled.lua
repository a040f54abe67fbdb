-- KEYS: (mailrelay.store.scripts.SWEEP_UNSETTLED_KEYS) those of SETTLE_KEYS (queue:unsettled,
--       queue:domains, idx:time, events), cluster
-- ARGV: (positions from SWEEP_UNSETTLED_ARGV) the key prefixes of SETTLE_ARGV (msg, body,
--       timeline, domain queue, recipient, tag and status index, minute and hour counters),
--       sweeper's owner, min_age_ms, max_age_ms, heartbeat_ttl_ms, limit
-- The sweeper (every daemon, before its heartbeat): confirms the messages left unsettled for
-- at least min_age_ms whose daemon has no live heartbeat (it died between storing a message
-- and settling it: the client may have had its 250), or unsettled for max_age_ms whatever
-- their daemon. Nothing is judged while the sweeper's own last heartbeat is older than the
-- heartbeat TTL (Redis or this daemon was stalled: the others could not beat either).
-- Returns flat: message id, its daemon, per message confirmed.
--#include _count
--#include _domain_min
--#include _settle

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cluster = KEYS[${sweep_unsettled_keys.cluster}]
local ttl = tonumber(ARGV[${sweep_unsettled.heartbeat_ttl_ms}])
local mine = redis.call('ZSCORE', cluster, ARGV[${sweep_unsettled.owner}])
if not mine or tonumber(mine) < now - ttl then return {} end
local names = settle_names(KEYS, ARGV, ${sweep_unsettled.msg_prefix})
local max_age = tonumber(ARGV[${sweep_unsettled.max_age_ms}])
local rows = redis.call('ZRANGEBYSCORE', names.unsettled, '-inf',
                        now - tonumber(ARGV[${sweep_unsettled.min_age_ms}]), 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[${sweep_unsettled.limit}]))
local out = {}
for k = 1, #rows, 2 do
  local id, at = rows[k], tonumber(rows[k + 1])
  local owner = redis.call('HGET', names.msg .. id, 'unsettled')
  if not owner then
    redis.call('ZREM', names.unsettled, id)
  else
    local beat = redis.call('ZSCORE', cluster, owner)
    if not beat or tonumber(beat) < now - ttl or at < now - max_age then
      settle(names, '', 'confirm', id, now)
      out[#out + 1] = id
      out[#out + 1] = owner
    end
  end
end
return out
