"""``shardqa bench``: shardqa measured side by side with its baselines on one machine."""

#: The parts of a bench run, in order (``shardqa bench --only``). Kept here, not in bench.run,
#: so the CLI can name them without importing torch.
PHASES = ("machine", "forward", "quality", "api", "baselines", "cached", "options", "peers",
          "rank", "budget", "scale", "chaos")
#: phases that run only when named in ``--only`` (the chaos run kills parts of its stack)
ON_REQUEST = ("chaos",)
