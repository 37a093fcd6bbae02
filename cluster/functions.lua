#!lua name=shardqa
-- The shardqa functions library, loaded on every master (FUNCTION LOAD REPLACE).
-- Every function touches only the keys it is given, all in one partition's slot.

local VERSION = '6'

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
-- candidates, every one scored in full (ZMSCORE of the other terms, its length). What a term
-- can add to a passage is bounded by the partition's highest tf of it (a passage is at least
-- tf terms long): once the terms not yet read could not lift a passage that has none of the
-- terms read so far to the current k-th best, their postings are never read: common words
-- cost nothing unless the rare ones leave the top k short. Within a term, postings are read
-- highest tf first in growing chunks, and the rest of them are left unread once even the
-- last tf read could not bring a new passage up to the k-th best. A candidate's other terms
-- are looked up rarest first, and it is dropped as soon as what it has plus what the terms
-- not yet looked up could add falls below the k-th best. Only what cannot reach the k-th
-- best is ever skipped (ties included, with a margin for rounding), so the result is the top
-- k that scoring every passage would give (exact BM25).
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
  local w, order, ub = {}, {}, {}
  -- most(t, tf): the most term t adds to a passage holding it tf times (dl >= tf)
  local function most(t, tf)
    return w[t] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * tf / avgdl))
  end
  for i = 2, #keys do
    w[i] = tonumber(args[4 + i]) or 1
    local top = redis.call('ZRANGE', keys[i], 0, 0, 'REV', 'WITHSCORES')
    if #top > 0 then  -- a term no passage of this partition holds adds nothing here
      ub[i] = most(i, tonumber(top[2]))
      order[#order + 1] = i
    end
  end
  table.sort(order, function(x, y)
    if w[x] ~= w[y] then return w[x] > w[y] end
    return x < y
  end)
  local rest = {[#order + 1] = 0}  -- rest[j]: the most terms order[j..] can add together
  for j = #order, 1, -1 do rest[j] = rest[j + 1] + ub[order[j]] end
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

  local function short(bound)  -- bound cannot reach the k-th best (margin for rounding)
    return #best >= k and bound * (1 + 1e-9) < best[k][2]
  end

  -- score the passages new[] that term i brought (tf[x] each), dropping the hopeless early
  local function score(i, new, tf)
    local bound, tfs, alive = {}, {}, {}
    local remain = 0
    for x = 1, #new do
      bound[x] = most(i, tf[x])
      tfs[x] = {[i] = tf[x]}
      alive[x] = x
    end
    local look = {}
    for _, t in ipairs(order) do
      if t ~= i and not done[t] then
        look[#look + 1] = t
        remain = remain + ub[t]
      end
    end
    for _, t in ipairs(look) do
      remain = remain - ub[t]
      local pids = {}
      for y = 1, #alive do pids[y] = new[alive[y]] end
      local got = redis.call('ZMSCORE', keys[t], unpack(pids))
      local still = {}
      for y = 1, #alive do
        local x = alive[y]
        if got[y] then
          local v = tonumber(got[y])
          tfs[x][t] = v
          bound[x] = bound[x] + most(t, v)
        end
        if not short(bound[x] + remain) then still[#still + 1] = x end
      end
      alive = still
      if #alive == 0 then return end
    end
    local pids = {}
    for y = 1, #alive do pids[y] = new[alive[y]] end
    local lens = redis.call('HMGET', keys[1], unpack(pids))
    for y = 1, #alive do
      local x = alive[y]
      local norm = k1 * (1 - b + b * (tonumber(lens[y]) or avgdl) / avgdl)
      local s = 0
      for t, v in pairs(tfs[x]) do
        s = s + w[t] * v * (k1 + 1) / (v + norm)
      end
      keep(new[x], s)
    end
  end

  for j = 1, #order do
    if short(rest[j] + open) then break end
    local i = order[j]
    local limit = cap > 0 and cap or math.huge
    local from, size, last, complete = 0, 128, nil, false
    while true do
      local want = math.min(size, limit - from)
      local postings = redis.call('ZRANGE', keys[i], from, from + want - 1, 'REV', 'WITHSCORES')
      local n = #postings / 2
      from = from + n
      local new, tf = {}, {}
      for x = 1, #postings, 2 do
        local pid = postings[x]
        if not seen[pid] then
          seen[pid] = true
          new[#new + 1] = pid
          tf[#tf + 1] = tonumber(postings[x + 1])
        end
      end
      if #new > 0 then score(i, new, tf) end
      if n > 0 then last = tonumber(postings[#postings]) end
      if n < want then complete = true break end
      if from >= limit then complete = redis.call('ZCARD', keys[i]) <= limit break end
      -- the unread postings hold term i at most last times, and the passages they bring
      -- lack every term read in full: can one still reach the k-th best?
      if short(most(i, last) + rest[j + 1] + open) then break end
      size = math.min(4 * size, 4096)
    end
    if complete then
      done[i] = true
    else  -- an unseen passage has this term at most as often as the last posting read
      open = open + most(i, last)
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
