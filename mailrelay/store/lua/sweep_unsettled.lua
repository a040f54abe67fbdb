-- KEYS: queue:unsettled, cluster; ARGV: key prefix (P), events_maxlen, sweeper's owner,
--       min_age_ms, max_age_ms, heartbeat_ttl_ms, limit
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
local ttl = tonumber(ARGV[6])
local mine = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not mine or tonumber(mine) < now - ttl then return {} end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]), 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[7]))
local out = {}
for k = 1, #rows, 2 do
  local id, at = rows[k], tonumber(rows[k + 1])
  local owner = redis.call('HGET', ARGV[1] .. 'msg:' .. id, 'unsettled')
  if not owner then
    redis.call('ZREM', KEYS[1], id)
  else
    local beat = redis.call('ZSCORE', KEYS[2], owner)
    if not beat or tonumber(beat) < now - ttl or at < now - tonumber(ARGV[5]) then
      settle(ARGV[1], '', 'confirm', id, now, ARGV[2])
      out[#out + 1] = id
      out[#out + 1] = owner
    end
  end
end
return out
