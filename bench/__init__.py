"""``shardqa bench``: shardqa measured side by side with its baselines on one machine."""
