"""The workflows admin: a change saved there is a new version, counted as the API counts them."""

import json

import pytest

from workflows.models import Workflow

from examples import THREE_STEPS

pytestmark = pytest.mark.django_db


def form(owner, name="Sum", description=""):
    definition = json.dumps(THREE_STEPS)
    return {"owner": owner.pk, "name": name, "description": description, "definition": definition}


def test_the_admin_bumps_the_version_once_per_save(admin_client, alice):
    r = admin_client.post("/admin/workflows/workflow/add/", form(alice))
    assert r.status_code == 302, r.content.decode()
    workflow = Workflow.objects.get(name="Sum")
    assert workflow.version == 1
    url = f"/admin/workflows/workflow/{workflow.pk}/change/"
    for version, description in [(2, "first change"), (3, "second change")]:
        r = admin_client.post(url, form(alice, description=description))
        assert r.status_code == 302, r.content.decode()
        workflow.refresh_from_db()
        assert (workflow.version, workflow.description) == (version, description)


def test_the_admin_refuses_a_bad_definition_without_a_new_version(admin_client, alice):
    workflow = Workflow.objects.create(owner=alice, name="Sum", definition=THREE_STEPS)
    bad = form(alice) | {"definition": json.dumps({"steps": []})}
    r = admin_client.post(f"/admin/workflows/workflow/{workflow.pk}/change/", bad)
    assert r.status_code == 200  # the form again, with the error
    assert "steps: a workflow needs at least one step" in r.content.decode()
    workflow.refresh_from_db()
    assert workflow.version == 1


def test_saves_that_race_make_a_version_each(alice):
    workflow = Workflow.objects.create(owner=alice, name="Sum", definition=THREE_STEPS)
    # two copies read before either is saved, as two admins (or an admin and the API) may
    first, second = Workflow.objects.get(pk=workflow.pk), Workflow.objects.get(pk=workflow.pk)
    first.save_new_version(description="one")
    second.save_new_version(description="two")
    assert (first.version, second.version) == (2, 3)
    workflow.refresh_from_db()
    assert (workflow.version, workflow.description) == (3, "two")
