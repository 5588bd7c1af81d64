from panel_pipeline.local.demo import demo_user_id, seed_users


def test_seed_users_is_idempotent(mongo_db):
    assert seed_users(mongo_db, 5) == 5
    assert seed_users(mongo_db, 5) == 0
    user = mongo_db.users.find_one({"_id": demo_user_id(3)})
    assert user["status"] == "active" and "profile" not in user
