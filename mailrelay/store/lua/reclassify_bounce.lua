-- KEYS: bounce, suppressed, suppressed:version, events; ARGV: bounce id, address ("" = keep
-- any suppression), n_fields, field/value pairs, now_ms. Updates the bounce record's fields
-- when it still exists (with a 'bounce_changed' entry in the event stream, for the archiver),
-- and removes the address's suppression only when that suppression was made by this
-- bounce (its entry's bounce_id), never one an operator or another bounce made.
-- Returns {record updated (0/1), suppression removed (0/1)}.
local updated, removed = 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local fields = {}
  for k = 4, 3 + tonumber(ARGV[3]) * 2 do fields[#fields + 1] = ARGV[k] end
  if #fields > 0 then
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('XADD', KEYS[4], '*', 'type', 'bounce_changed', 'bounce', ARGV[1],
               'at', ARGV[4 + tonumber(ARGV[3]) * 2])
  end
  updated = 1
end
if ARGV[2] ~= '' then
  local entry = redis.call('HGET', KEYS[2], ARGV[2])
  if entry then
    local ok, decoded = pcall(cjson.decode, entry)
    if ok and type(decoded) == 'table' and decoded['bounce_id'] == ARGV[1] then
      redis.call('HDEL', KEYS[2], ARGV[2])
      redis.call('INCR', KEYS[3])
      removed = 1
    end
  end
end
return {updated, removed}
