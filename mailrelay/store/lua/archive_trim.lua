-- KEYS: events
-- ARGV: keep_ms (entries younger than this stay whatever: a short, bounded tail), then the
--       consumer groups that count (the archiver's, the webhook service's when it runs)
-- Removes from the stream the entries every counted group is done with: those below the
-- oldest entry any of them still needs (its oldest pending entry, else the first one it was
-- never delivered) and older than keep_ms. Groups not named (e.g. a webhooks group left by an
-- old configuration) hold nothing back. When a counted group does not exist nothing is
-- removed (its entries are not known to be done). Returns the number of entries removed, or
-- -1 (a counted group missing).
--#include _streams

if #ARGV < 2 then return 0 end  -- no group counted: nothing is known to be done
local groups = stream_groups(KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bound = string.format('%.0f-0', math.max(0, now - tonumber(ARGV[1])))
for k = 2, #ARGV do
  local group = groups[ARGV[k]]
  if not group then return -1 end
  local needed = id_after(group.last)
  if group.pending > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], ARGV[k])[2]
    if id_less(oldest, needed) then needed = oldest end
  end
  if id_less(needed, bound) then bound = needed end
end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
