-- KEYS: events
-- ARGV: consumer group
-- How far the group is behind: {1, pending, lag (entries never delivered; -1 when Redis
-- cannot tell), id of the oldest entry not acknowledged (or false), Redis's time (ms), stream
-- length}, or {0} when the group does not exist. Pending entries are all older than the ones
-- never delivered, so the oldest is the oldest pending one, else the first after the group's
-- last delivered id.
--#include _streams

local group = stream_groups(KEYS[1])[ARGV[1]]
if not group then return {0} end
local oldest = false
if group.pending > 0 then
  oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
else
  local first = redis.call('XRANGE', KEYS[1], '(' .. group.last, '+', 'COUNT', 1)
  if #first > 0 then oldest = first[1][1] end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {1, group.pending, group.lag or -1, oldest, now, redis.call('XLEN', KEYS[1])}
