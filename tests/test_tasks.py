"""One task vocabulary: every older copy agrees with ``hicae.tasks``, and names resolve or fail clearly."""

import typing

import pytest

from hicae import DataError, layout, model, tasks
from hicae.training import data
from hicae.serve import schemas


def test_older_copies_agree_with_the_vocabulary():
    assert model.TASKS is tasks.TASKS  # the order of the task embeddings' rows
    assert data.TASK_INDEX is tasks.TASK_INDEX  # the collator's task column: imported, not copied
    assert tasks.TASK_INDEX == {"ae": 0, "lm": 1, "ft": 2}  # the rows of a checkpoint's task embeddings
    assert layout.TASK_IDS == tasks.PLACEHOLDER
    assert set(tasks.USER_TASKS.values()) == set(tasks.TASKS)
    assert typing.get_args(schemas.GenerateRequest.model_fields["task"].annotation) == tuple(tasks.USER_TASKS)


def test_user_names_resolve_and_unknown_ones_fail_in_one_line():
    assert [tasks.model_task(n) for n in ("answer", "reconstruct", "continue")] == ["ft", "ae", "lm"]
    with pytest.raises(DataError, match=r"^unknown task 'ft' \(choose from answer, reconstruct, continue\)$"):
        tasks.model_task("ft")
