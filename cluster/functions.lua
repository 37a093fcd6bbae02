#!lua name=shardqa
-- The shardqa functions library, loaded on every master (FUNCTION LOAD REPLACE).
-- Every function touches only the keys it is given, all in one partition's slot.

local VERSION = '3'

local function shardqa_version(keys, args)
  return VERSION
end

-- stats: partition statistics and document frequencies for the query terms.
-- KEYS: stats, df.  ARGV: term...  Returns {n, total_length, df(term1), df(term2), ...}.
local function stats(keys, args)
  local st = redis.call('HMGET', keys[1], 'n', 'total')
  local out = {tonumber(st[1]) or 0, tonumber(st[2]) or 0}
  if #args > 0 then
    local dfs = redis.call('HMGET', keys[2], unpack(args))
    for i = 1, #dfs do
      out[#out + 1] = tonumber(dfs[i]) or 0
    end
  end
  return out
end

-- rank: BM25 over one partition with global weights, so scores compare across partitions.
-- KEYS: lengths, term postings (one sorted set per query term: member passage id, score tf).
-- ARGV: k, k1, b, avgdl, weight(term1), weight(term2), ...  (weights: global idf)
-- Returns {passage id, score, passage id, score, ...} best first, at most k pairs.
local function rank(keys, args)
  local k = tonumber(args[1]) or 5
  local k1 = tonumber(args[2]) or 1.2
  local b = tonumber(args[3]) or 0.75
  local avgdl = tonumber(args[4]) or 1
  if avgdl <= 0 then avgdl = 1 end
  local pids, tf_lists, weights = {}, {}, {}
  local seen = {}
  for i = 2, #keys do
    local w = tonumber(args[3 + i]) or 1
    local postings = redis.call('ZRANGE', keys[i], 0, -1, 'WITHSCORES')
    for j = 1, #postings, 2 do
      local pid = postings[j]
      local entry = seen[pid]
      if not entry then
        entry = {}
        seen[pid] = entry
        pids[#pids + 1] = pid
      end
      entry[#entry + 1] = w
      entry[#entry + 1] = tonumber(postings[j + 1])
    end
  end
  if #pids == 0 then return {} end
  local scored = {}
  local chunk = 4000
  for start = 1, #pids, chunk do
    local stop = math.min(start + chunk - 1, #pids)
    local lens = redis.call('HMGET', keys[1], unpack(pids, start, stop))
    for i = start, stop do
      local dl = tonumber(lens[i - start + 1]) or avgdl
      local norm = k1 * (1 - b + b * dl / avgdl)
      local entry = seen[pids[i]]
      local s = 0
      for j = 1, #entry, 2 do
        local tf = entry[j + 1]
        s = s + entry[j] * tf * (k1 + 1) / (tf + norm)
      end
      scored[#scored + 1] = {pids[i], s}
    end
  end
  table.sort(scored, function(x, y)
    if x[2] == y[2] then return x[1] < y[1] end
    return x[2] > y[2]
  end)
  local out = {}
  for i = 1, math.min(k, #scored) do
    out[#out + 1] = scored[i][1]
    out[#out + 1] = string.format('%.17g', scored[i][2])
  end
  return out
end

-- ask: for redis-cli. KEYS: the answer key "sq:qa:<question>".
-- Returns the cached answer JSON; on a miss the GET itself raises the key-miss event that
-- makes the owning shard worker compute the answer, and we say where it will appear.
local function ask(keys, args)
  local answer = redis.call('GET', keys[1])
  if answer then return answer end
  return 'pending: the answer will appear at ' .. keys[1] .. ' (GET it again in a moment)'
end

redis.register_function{function_name='shardqa_version', callback=shardqa_version,
                        flags={'no-writes'}}
redis.register_function{function_name='stats', callback=stats, flags={'no-writes'}}
redis.register_function{function_name='rank', callback=rank, flags={'no-writes'}}
redis.register_function{function_name='ask', callback=ask, flags={'no-writes'}}
