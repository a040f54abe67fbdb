-- KEYS: suppressed, suppressed:version; ARGV: addresses.
-- Returns {version, then the entry (or nil) of each address}.
local reply = {redis.call('GET', KEYS[2]) or '0'}
for first = 1, #ARGV, 500 do  -- unpack() has a limit of a few thousand values
  local entries = redis.call('HMGET', KEYS[1], unpack(ARGV, first, math.min(first + 499, #ARGV)))
  for i = 1, #entries do reply[#reply + 1] = entries[i] end
end
return reply
