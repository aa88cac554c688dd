"""The evaluation suite (``hicae eval``): reconstruction, perplexity, QA and synthetic retrieval.

One module per concern: ``metrics`` (scores), ``records`` (reading data), ``runtime`` (settings,
batching, compression), ``decoding`` (NLL and plain-text generation), one module per task
(``ae``, ``ppl``, ``qa``, ``retrieval``) returning a ``report.TaskResult`` and declaring its
``eval_task.EvalTask``, ``registry`` (the tasks by name, what ``hicae eval --task`` offers) and
``report`` (JSON, JSONL, markdown and PNG files).
"""

from .ae import run_ae
from .ppl import CONDITIONS, run_ppl
from .qa import run_qa
from .records import QARecord, TextRecord, read_qa, read_texts
from .report import TaskResult, write_report
from .registry import REGISTRY, TASKS
from .retrieval import run_retrieval
from .runtime import EvalSettings

__all__ = ["TASKS", "REGISTRY", "CONDITIONS", "EvalSettings", "TaskResult", "TextRecord", "QARecord", "read_texts", "read_qa",
           "run_ae", "run_ppl", "run_qa", "run_retrieval", "write_report"]
