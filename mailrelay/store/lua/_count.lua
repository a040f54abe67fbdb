-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines count(stats_prefix, now_ms, name, by)
-- Shared Lua: per-minute (kept 2 hours) and per-hour (kept 2 days) counters for the stats API
-- and the status page charts. stats_prefix is P .. 'stats:'.
local function count(stats_prefix, now_ms, name, by)
  local minute = math.floor(now_ms / 60000)
  local hour = math.floor(now_ms / 3600000)
  local mkey = stats_prefix .. 'm:' .. minute
  local hkey = stats_prefix .. 'h:' .. hour
  redis.call('HINCRBY', mkey, name, by)
  redis.call('EXPIRE', mkey, 7200)
  redis.call('HINCRBY', hkey, name, by)
  redis.call('EXPIRE', hkey, 172800)
end
