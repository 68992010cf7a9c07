"""The tests' stand-in for the broker (conftest's `no_queue`) carries what JSON carries and no
more, so an enqueue that would not serialize fails in the tests."""

import pytest

from agents import services
from runs import tasks
from runs.models import Run

from conftest import new_thread

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_it_refuses_a_task_argument_json_does_not_carry(no_queue, alice):
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    assert no_queue.args(tasks.execute_run_task) == [[str(run.pk)]]
    for argument in (run.pk, run):  # a UUID, a model
        with pytest.raises(TypeError, match="not JSON serializable"):
            tasks.execute_run_task.delay(argument)
        with pytest.raises(TypeError, match="not JSON serializable"):
            tasks.execute_run_task.apply_async((argument,))
    no_queue.run()
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED
