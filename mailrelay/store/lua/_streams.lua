-- KEYS: none of its own (a shared piece: archive_trim and archive_lag --#include it)
-- ARGV: none of its own; defines stream_groups(stream), id_less(a, b), id_after(id)
-- Shared Lua: the consumer groups of a stream and stream id arithmetic.
-- stream_groups(stream): {name = {pending = n, last = last-delivered id, lag = n or false}}
-- for every group of the stream (empty when the stream does not exist).
local function stream_groups(stream)
  local groups = {}
  if redis.call('EXISTS', stream) == 0 then return groups end
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local row = {}
    for k = 1, #flat, 2 do row[flat[k]] = flat[k + 1] end
    groups[row['name']] = {pending = tonumber(row['pending']), last = row['last-delivered-id'],
                           lag = row['lag'] and tonumber(row['lag']) or false}
  end
  return groups
end
-- stream ids are '<ms>-<seq>': compared as numbers (ms fits a double exactly)
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function id_less(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
-- the smallest id after id
local function id_after(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.format('%s-%.0f', ms, tonumber(seq) + 1)
end
