"""The README's user story, end to end: init, daemon, quickstart, send, inbox, reply."""


def test_user_story(agents):
    t = agents
    sent = t.json("send", "hi bob", "--to", "@bob", name="alice")
    assert sent["message_id"].startswith("msg_")
    inbox = t.json("inbox", name="bob")
    assert [m["body"]["content"] for m in inbox["messages"]] == ["hi bob"]
    assert inbox["messages"][0]["agent_id"] == "alice"
    reply = t.json("reply", sent["message_id"], "hello alice", name="bob")
    alice_inbox = t.json("inbox", name="alice")
    assert [(m["message_id"], m["reply_to"]) for m in alice_inbox["messages"]] == \
        [(reply["message_id"], sent["message_id"])]
