from luthitune.migrations import MIGRATIONS
from luthitune.store import Store


def test_migrations_recorded_once(tmp_path):
    path = tmp_path / "luthitune.db"
    s = Store(path)
    names = [n for n, _ in MIGRATIONS]
    assert s.applied_migrations() == names
    s.close()
    s2 = Store(path)
    assert s2.migrate() == []  # nothing re-applied
    assert s2.applied_migrations() == names
    expected = {
        "runs",
        "messages",
        "consents",
        "constitution_versions",
        "scenarios",
        "pairs",
        "training_runs",
        "training_steps",
        "evaluations",
        "_migrations",
    }
    assert expected <= set(s2.db.table_names())


def test_new_migration_applies_on_open(tmp_path, monkeypatch):
    path = tmp_path / "luthitune.db"
    Store(path).close()

    def m999_extra(db):
        db["extra"].create({"id": int}, pk="id")

    monkeypatch.setattr("luthitune.migrations.MIGRATIONS", [*MIGRATIONS, ("m999_extra", m999_extra)])
    s = Store(path)
    assert "extra" in s.db.table_names() and s.applied_migrations()[-1] == "m999_extra"


def test_a_database_from_before_m009_gets_it_after_m010(tmp_path, monkeypatch):
    """m010 was released before m009: a database that has m010 and not m009 gets m009 on open, once."""
    path = tmp_path / "luthitune.db"
    upto = [n for n, _ in MIGRATIONS].index("m010_generation_host") + 1
    monkeypatch.setattr("luthitune.migrations.MIGRATIONS", MIGRATIONS[:upto])
    Store(path).close()
    monkeypatch.setattr("luthitune.migrations.MIGRATIONS", MIGRATIONS)
    s = Store(path)
    assert s.applied_migrations()[upto:] == [n for n, _ in MIGRATIONS[upto:]]
    assert "m009_model_identity" in s.applied_migrations() and "chat_identity_json" in s.db["runs"].columns_dict
    assert s.migrate() == []


def test_messages_are_idempotent(store):
    store.upsert_run("r1", backend="local")
    store.add_message("r1", 0, 0, "user", "hello")
    store.add_message("r1", 0, 1, "assistant", "hi")
    first = store.transcript("r1")
    store.add_message("r1", 0, 1, "assistant", "hi")  # a node re-run after a crash
    assert store.count("messages") == 2
    assert store.transcript("r1") == first  # created_at kept, nothing duplicated
    store.add_message("r1", 0, 1, "assistant", "hi, edited")
    assert [m["content"] for m in store.transcript("r1")] == ["hello", "hi, edited"]


def test_artifact_upserts_update_instead_of_duplicating(store):
    store.upsert_run("r1", backend="local")
    row = {"id": "r1:c0:s0001", "run_id": "r1", "cycle": 0, "idx": 1, "prompt": "p", "status": "pending"}
    store.upsert("scenarios", row)
    store.upsert("scenarios", {**row, "status": "done", "reasons_json": ["ok"]})
    assert store.count("scenarios") == 1
    assert store.get("scenarios", "r1:c0:s0001")["status"] == "done"
    ev = {"run_id": "r1", "cycle": 0, "model": "base", "metric": "pref_acc", "value": 0.5}
    store.upsert("evaluations", ev, pk=("run_id", "cycle", "model", "metric"))
    store.upsert("evaluations", {**ev, "value": 0.75}, pk=("run_id", "cycle", "model", "metric"))
    assert [r["value"] for r in store.rows("evaluations")] == [0.75]


def test_run_keeps_created_at(store):
    store.upsert_run("r1", backend="local", status="running")
    created = store.get("runs", "r1")["created_at"]
    store.upsert_run("r1", status="done")
    row = store.get("runs", "r1")
    assert row["created_at"] == created and row["status"] == "done" and row["backend"] == "local"


def test_queries_are_keyword_filters_with_values_as_parameters(store):
    import pytest

    store.upsert_run("r1", backend="local")
    for i, (cycle, status, item) in enumerate([(0, "a", "x_1"), (1, "b", "x%2"), (2, "a", "y_3")]):
        store.record_attempt("r1", cycle, status, item, i, "raw", [])
    ids = lambda **w: [r["item_id"] for r in store.rows("attempts", order_by="cycle", **w)]  # noqa: E731
    assert ids(run_id="r1", step="a") == ["x_1", "y_3"]
    assert ids(cycle__le=1) == ["x_1", "x%2"] and ids(cycle__lt=1) == ["x_1"] and ids(cycle__ge=2) == ["y_3"]
    assert (
        ids(step__ne="a") == ["x%2"] and ids(step__in=("b",)) == ["x%2"] and ids(step__notin=("b",)) == ["x_1", "y_3"]
    )
    assert ids(item_id__startswith="x%") == ["x%2"]  # % and _ are the prefix's own characters, not wildcards
    assert ids(item_id__startswith="x_") == ["x_1"]
    assert ids(raw=None) == [] and ids(raw__ne=None) == ["x_1", "x%2", "y_3"]
    assert store.count("attempts", run_id="r1", cycle__gt=0) == 2
    with pytest.raises(ValueError, match="column"):
        store.rows("attempts", **{"run_id = run_id or 1": "x"})
    with pytest.raises(ValueError, match="unknown filter"):
        store.rows("attempts", cycle__near=1)
    store.delete("attempts", step="a")
    assert ids() == ["x%2"]
