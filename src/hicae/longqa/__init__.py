"""Long-document QA (issue 18): checkable questions on held-out documents of 2k to 100k+ tokens, answered
from memory (flat multi-span, hierarchical with a slot budget) and from the baselines at the same budget
(the last N tokens, BM25-retrieved chunks), the full text where it fits, and no context."""
