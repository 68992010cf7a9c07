"""Answers GET requests with Django's test client in the code on sys.path, old or current, on
the database of DATABASE_URL: argv[1] holds [{"path", "user"} or {"path", "token"}], argv[2]
gets [{"status", "json"} or {"status", "text"}] in the same order. tests/test_upgrade.py asks
the same questions before and after the upgrade. It uses nothing but URLs and the user model,
so that it runs unchanged on either side of a move of the models."""

import json
import sys

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402  (after setup)
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

setup_test_environment()  # the test client's host, "testserver", allowed

clients = {}


def client(request):
    if "token" in request:
        return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Token {request['token']}")
    if request["user"] not in clients:
        # a 500 is an answer to compare, not the end of the script
        clients[request["user"]] = Client(raise_request_exception=False)
        clients[request["user"]].force_login(get_user_model().objects.get(username=request["user"]))
    return clients[request["user"]]


def answer(request):
    response = client(request).get(request["path"])
    if response.get("Content-Type", "").startswith("application/json"):
        return {"status": response.status_code, "json": response.json()}
    return {"status": response.status_code, "text": response.content.decode()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        requests = json.load(f)
    with open(sys.argv[2], "w") as out:
        json.dump([answer(r) for r in requests], out, indent=1)
