"""``shardqa ingest --sql``: the corpus from a SQL table or query, kept equal to it.

Real parts: the session's Redis Cluster, real shard worker processes (they index and delete),
the ``shardqa ingest`` CLI in a subprocess, a SQLite file and a PostgreSQL server.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cluster import keys, partitions
from loaders.documents import Document
from loaders.passages import split_passages
from loaders.writer import digest
from tests import postgres as postgres_server
from tests.conftest import run_cli

postgres = postgres_server.postgres  # the PostgreSQL server fixture

articles = sa.Table(
    "articles", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("updated", sa.Integer),
)


def body(i: int, edition: int = 0) -> str:
    return (f"Article {i} edition {edition} is about the city number {i}. It has {i * 7} "
            f"parks and {i + edition} museums, and its river is called R{i}.")


@pytest.fixture(params=["sqlite-table-version", "postgresql-query-hash"])
def source(request, tmp_path):
    """(url, ingest options) of a source database holding 30 good rows and one bad one."""
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'source.sqlite'}"
        options = ["--table", "articles", "--version-field", "updated"]
    else:
        url = request.getfixturevalue("postgres").url
        options = ["--query", "SELECT id, title, body FROM articles WHERE id < 1000"]
    engine = sa.create_engine(url)
    articles.metadata.drop_all(engine)
    articles.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(articles.insert(), [{"id": i, "title": f"Article {i}", "body": body(i),
                                          "updated": 1} for i in range(1, 31)])
        conn.execute(articles.insert(), [{"id": 99, "title": "bad", "body": None,
                                          "updated": 1}])
    yield url, engine, options, request.param
    engine.dispose()


def ingest(cluster, url: str, options: list[str]):
    proc = run_cli("ingest", "--sql", url, *options, "--text-field", "body", "--timeout", "60",
                   "--dir", cluster.target.directory, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc.stdout = " ".join(proc.stdout.split())  # rich wraps at 80 columns
    return proc


def corpus(client) -> dict[str, str]:
    """doc id -> stored digest of every document in the cluster, after checking that the
    passages and the index hold exactly those documents' passages."""
    pmap = partitions.load(client)
    docs: dict[str, str] = {}
    passages: set[str] = set()
    indexed: set[str] = set()
    for p in pmap:
        for key in client.scan_iter(match=keys.doc(p.tag, "*"), target_nodes=client.ALL_NODES):
            doc = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
            docs[doc["doc_id"]] = doc["digest"]
            passages |= {partitions.passage_id(doc["doc_id"], i)
                         for i in range(int(doc["passages"]))}
        indexed |= {f.decode() for f in client.hkeys(keys.index_lengths(p.tag))}
        stored = {k.decode().rsplit(":", 1)[1] for k in
                  client.scan_iter(match=keys.passage(p.tag, "*"),
                                   target_nodes=client.ALL_NODES)}
        assert stored == {pid for pid in passages if pmap.for_passage(pid).tag == p.tag}
    assert indexed == passages
    return docs


def expected(engine) -> dict[str, str]:
    """doc id -> the digest the writer computes for each good row of the source."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(articles).where(articles.c.body.is_not(None))).all()
    docs = {}
    for r in rows:
        doc = Document(str(r.id), r.body, title=r.title)
        docs[str(r.id)] = digest(doc, split_passages(doc))
    return docs


def test_a_rerun_leaves_the_corpus_equal_to_the_source(cluster, workers, source):
    url, engine, options, kind = source
    client = cluster.client()
    workers.start_all()
    workers.wait_ready(need_model=False)
    first = ingest(cluster, url, options)
    name = "articles" if "--table" in options else "query"  # bad rows named table:id
    assert f"skipped {name}:99: missing text field 'body'" in first.stderr
    assert f"error: {name}:99: missing text field 'body'" in first.stdout
    assert corpus(client) == expected(engine) and len(expected(engine)) == 30

    with engine.begin() as conn:
        for i in (2, 3, 4):  # changed
            conn.execute(articles.update().where(articles.c.id == i).values(
                body=body(i, 1), updated=2))
        conn.execute(articles.delete().where(articles.c.id.in_([5, 6, 7, 8, 9])))
        conn.execute(articles.insert(), [{"id": i, "title": f"Article {i}", "body": body(i),
                                          "updated": 1} for i in range(31, 35)])
    second = ingest(cluster, url, options)
    assert corpus(client) == expected(engine) and len(expected(engine)) == 29
    assert "5 documents gone from the source removed" in second.stdout
    if "version" in kind:  # unchanged rows were skipped by their version, unread
        assert "22 unchanged by version" in second.stdout

    third = ingest(cluster, url, options)  # nothing changed: nothing written or removed
    assert "passages written" in third.stdout
    assert _count(third.stdout, "passages written") == 0
    assert "0 documents gone from the source removed" in third.stdout
    assert corpus(client) == expected(engine)


def _count(report: str, label: str) -> int:
    return int(report.split(label, 1)[1].strip(" │|").split()[0].replace(",", ""))


def test_bad_sql_options_are_one_line_errors(cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'none.sqlite'}"
    d = ["--dir", cluster.target.directory, "--no-wait"]
    cases = [
        (["--sql", url], "exactly one of --table or --query"),
        (["--sql", url, "--table", "nope"], "--table 'nope': no such table"),
        (["--sql", url, "--query", "SELEC nonsense"], "--sql query:"),
        (["--sql", "nosuchdb://x", "--table", "t"], "not a usable SQLAlchemy URL"),
        (["--table", "t"], "need --sql URL"),
        (["--sql", url, "--table", "t", "some/path"], "give no PATH"),
    ]
    for args, message in cases:
        proc = run_cli("ingest", *args, *d)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_on_error_abort_writes_nothing_from_a_source_with_a_bad_row(cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    engine = sa.create_engine(url)
    articles.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(articles.insert(), [{"id": 1, "title": "a", "body": body(1)},
                                         {"id": 2, "title": "b", "body": "  "}])
    engine.dispose()
    proc = run_cli("ingest", "--sql", url, "--table", "articles", "--text-field", "body",
                   "--on-error", "abort", "--no-wait", "--dir", cluster.target.directory)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "articles:2: text field 'body' is empty" in proc.stderr
    assert "nothing from articles was written" in proc.stderr
    assert corpus(cluster.client()) == {}
