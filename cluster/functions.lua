#!lua name=shardqa
-- The shardqa functions library, loaded on every master (FUNCTION LOAD REPLACE).
-- Every function touches only the keys it is given, all in one partition's slot.

local VERSION = '5'

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
-- ARGV: k, k1, b, avgdl, cap, weight(term1), weight(term2), ...  (weights: global idf)
-- Returns {passage id, score, passage id, score, ...} best first, at most k pairs.
--
-- MaxScore: terms are taken rarest (highest weight) first, and each one's postings bring new
-- candidates, every one scored in full at once (ZMSCORE of the other terms, its length). A
-- term can add at most weight x (k1 + 1) to a passage; once the terms not yet read could
-- not lift a passage that has none of the terms read so far past the current k-th best,
-- their postings are never read: common words cost nothing unless the rare ones leave the
-- top k short. The result is the top k that reading every term would give (exact BM25).
-- cap > 0 also reads at most cap postings per term, highest tf first, so the work stops
-- growing with the corpus even for questions made only of common words; every passage found
-- still gets its exact score (an unseen passage may hold a cut term, at most with the last
-- tf read: the bound counts that). cap 0 reads every posting a term needs.
local function rank(keys, args)
  local k = tonumber(args[1]) or 5
  local k1 = tonumber(args[2]) or 1.2
  local b = tonumber(args[3]) or 0.75
  local avgdl = tonumber(args[4]) or 1
  local cap = tonumber(args[5]) or 0
  if avgdl <= 0 then avgdl = 1 end
  local w, order = {}, {}
  for i = 2, #keys do
    w[i] = tonumber(args[4 + i]) or 1
    order[#order + 1] = i
  end
  table.sort(order, function(x, y)
    if w[x] ~= w[y] then return w[x] > w[y] end
    return x < y
  end)
  local rest = {[#order + 1] = 0}  -- rest[j]: the most terms order[j..] can add together
  for j = #order, 1, -1 do rest[j] = rest[j + 1] + w[order[j]] * (k1 + 1) end
  local chunk = 4000
  local seen, best = {}, {}
  local done = {}  -- terms read before, every posting of them: unseen passages lack them
  local open = 0   -- the most the cut terms read so far can add to an unseen passage

  local function keep(pid, s)  -- into the best k, sorted by score then passage id
    local n = #best
    if n < k or s > best[n][2] or (s == best[n][2] and pid < best[n][1]) then
      local at = math.min(n + 1, k)
      while at > 1 and (s > best[at - 1][2] or
                        (s == best[at - 1][2] and pid < best[at - 1][1])) do
        best[at] = best[at - 1]
        at = at - 1
      end
      best[at] = {pid, s}
    end
  end

  for j = 1, #order do
    if #best >= k and rest[j] + open <= best[k][2] then break end
    local i = order[j]
    local postings, complete
    if cap > 0 then
      postings = redis.call('ZRANGE', keys[i], 0, cap - 1, 'REV', 'WITHSCORES')
      complete = #postings < 2 * cap or redis.call('ZCARD', keys[i]) <= cap
    else
      postings = redis.call('ZRANGE', keys[i], 0, -1, 'WITHSCORES')
      complete = true
    end
    local new, tfs = {}, {}
    for x = 1, #postings, 2 do
      local pid = postings[x]
      if not seen[pid] then
        seen[pid] = true
        new[#new + 1] = pid
        tfs[pid] = {[i] = tonumber(postings[x + 1])}
      end
    end
    for start = 1, #new, chunk do
      local stop = math.min(start + chunk - 1, #new)
      for _, t in ipairs(order) do
        if t ~= i and not done[t] then
          local got = redis.call('ZMSCORE', keys[t], unpack(new, start, stop))
          for x = start, stop do
            local tf = got[x - start + 1]
            if tf then tfs[new[x]][t] = tonumber(tf) end
          end
        end
      end
      local lens = redis.call('HMGET', keys[1], unpack(new, start, stop))
      for x = start, stop do
        local dl = tonumber(lens[x - start + 1]) or avgdl
        local norm = k1 * (1 - b + b * dl / avgdl)
        local s = 0
        for t, tf in pairs(tfs[new[x]]) do
          s = s + w[t] * tf * (k1 + 1) / (tf + norm)
        end
        keep(new[x], s)
      end
    end
    if complete then
      done[i] = true
    else  -- an unseen passage has this term at most as often as the last posting read
      local tf = tonumber(postings[#postings])
      open = open + w[i] * tf * (k1 + 1) / (tf + k1 * (1 - b))
    end
  end
  local out = {}
  for x = 1, #best do
    out[#out + 1] = best[x][1]
    out[#out + 1] = string.format('%.17g', best[x][2])
  end
  return out
end

-- postings: a batch's postings changes in one partition, in one call (the shard worker,
-- inside its per-partition transaction). KEYS: term postings.
-- ARGV: for each key in order: n, then n pairs tf, passage id (tf 0: the passage leaves).
local function postings(keys, args)
  local at = 1
  for i = 1, #keys do
    local n = tonumber(args[at])
    local adds, removes = {}, {}
    for j = at + 1, at + 2 * n, 2 do
      if tonumber(args[j]) > 0 then
        adds[#adds + 1] = args[j]
        adds[#adds + 1] = args[j + 1]
      else
        removes[#removes + 1] = args[j + 1]
      end
    end
    if #adds > 0 then redis.call('ZADD', keys[i], unpack(adds)) end
    if #removes > 0 then redis.call('ZREM', keys[i], unpack(removes)) end
    at = at + 1 + 2 * n
  end
  return #keys
end

-- counts: HINCRBY of many fields of one hash in one call (the worker's document-frequency
-- changes of a batch). KEYS: the hash. ARGV: field, delta, ...
local function counts(keys, args)
  for i = 1, #args, 2 do
    redis.call('HINCRBY', keys[1], args[i], args[i + 1])
  end
  return #args / 2
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
redis.register_function{function_name='postings', callback=postings}
redis.register_function{function_name='counts', callback=counts}
