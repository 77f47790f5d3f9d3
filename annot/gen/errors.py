"""The two ways an LLM generation stops early, each with its own exit code.

    annot generate CLAIM --backend openai ... --max-cost 5     # exit 3 when the budget is spent

Both leave only complete records behind (stage files are appended one fsynced line at a time), so
rerunning the same command resumes where the stop happened and pays nothing twice (the cache).
"""
from __future__ import annotations

from annot.errors import AnnotError


class GenerationFailed(AnnotError):
    """The model server or model failed in a way retries do not fix (HTTP 401/400, bad replies)."""

    exit_code = 1


class BudgetReached(AnnotError):
    """`--max-tokens` / `--max-cost` is spent: the generation stopped cleanly before finishing."""

    exit_code = 3
