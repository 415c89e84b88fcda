"""The MongoDB URI's credentials never reach a message."""

import pytest

from twotower_pipeline.cli import main as cli_main
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store.client import redact_text, redact_uri

SECRET_URI = "mongodb://admin:s3cr3t-Pa55@127.0.0.1:1/?serverSelectionTimeoutMS=300"


def test_redact_uri_hides_user_and_password():
    assert redact_uri("mongodb+srv://bob:pw@cluster.example/db?x=1") == "mongodb+srv://***:***@cluster.example/db"
    assert redact_uri("mongodb://127.0.0.1:27017/") == "mongodb://127.0.0.1:27017/"
    assert "pw" not in redact_text("failed for mongodb://bob:pw@h:1 and pw", "mongodb://bob:pw@h:1")


def test_connection_errors_do_not_carry_the_password(monkeypatch):
    resource = MongoResource(uri=SECRET_URI)
    store = resource.store()  # pymongo connects lazily
    with pytest.raises(Exception) as raised:
        store.client.admin.command("ping")
    assert "s3cr3t" not in str(raised.value)
    assert "s3cr3t" not in repr(store.describe())


def test_cli_reports_errors_without_the_password(monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", "mongodb://admin:s3cr3t-Pa55@")  # malformed: pymongo raises with the URI
    assert cli_main(["load", "simulate", "--requests", "10"]) == 2
    captured = capsys.readouterr()
    assert "s3cr3t" not in captured.err + captured.out
    assert "twotower load" in captured.err
