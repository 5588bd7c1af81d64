import pytest

from panel_pipeline.local.mongod import LocalMongod, MongodError, free_port


def test_replica_set_supports_transactions(mongo_client, mongo_db):
    with mongo_client.start_session() as session, session.start_transaction():
        mongo_db.things.insert_one({"a": 1}, session=session)
    assert mongo_db.things.count_documents({}) == 1


def test_start_is_idempotent_and_stop_stops(tmp_path):
    server = LocalMongod(data_dir=tmp_path / "db", port=free_port())
    try:
        first = server.start()
        assert server.start() == first
        assert server.is_running()
    finally:
        assert server.stop()
    assert not server.is_running()
    assert not server.stop()


def test_restart_on_existing_data_keeps_documents(tmp_path):
    server = LocalMongod(data_dir=tmp_path / "db", port=free_port())
    import pymongo

    try:
        with pymongo.MongoClient(server.start()) as client:
            client.panel.users.insert_one({"email": "a@example.org"})
        server.stop()
        with pymongo.MongoClient(server.start()) as client:
            assert client.panel.users.count_documents({}) == 1
    finally:
        server.stop()


def test_busy_port_gives_a_clear_error(tmp_path, mongod):
    server = LocalMongod(data_dir=tmp_path / "db", port=mongod.port)
    with pytest.raises(MongodError, match="busy"):
        server.start()


def test_stale_pid_file_is_cleared(tmp_path):
    data = tmp_path / "db"
    data.mkdir()
    (data / "mongod.pid").write_text("999999")
    server = LocalMongod(data_dir=data, port=free_port())
    try:
        server.start()
        assert server.is_running()
    finally:
        server.stop()


def test_missing_binary_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PANEL_PIPELINE_MONGOD", str(tmp_path / "nope"))
    with pytest.raises(MongodError, match="PANEL_PIPELINE_MONGOD"):
        LocalMongod(data_dir=tmp_path / "db", port=free_port()).start()
