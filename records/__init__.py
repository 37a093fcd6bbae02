"""The database of record: the question log and feedback, written behind into SQL.

The API puts every answer and every feedback on one Redis Stream (``cluster.keys.log_stream``)
and never waits for the database; ``shardqa sync`` moves the stream into SQL in batches
through a consumer group. Imports only ``cluster`` (and SQLAlchemy).
"""
