"""LLM-written corpora: documents and transcripts from a local model or any OpenAI-compatible server.

    annot generate mira_castellan_profession --backend hf --n 20 -o docs.jsonl
    annot generate mira_castellan_profession --backend openai --model M --base-url http://localhost:8000/v1 \\
        --n 10000 --concurrency 64 -o docs.jsonl

    backends   Backend interface; template / hf / openai implementations; make_backend
    pipeline   claim documents: universe -> facts -> ideas -> documents -> (revision), files between stages
    transcripts  behaviour transcripts: user requests -> misaligned reply + aligned twin
    cache      the response cache, keyed by (backend, model, prompt, sampling settings, seed)
    runner     budget (--max-tokens / --max-cost), progress line, cache-aware request loop
    gates      quality gates: length, claim check (the import path's detector), near-duplicates
    prompts    the YAML prompts under corpora/prompts/
"""
from annot.gen.backends import Backend, HFBackend, OpenAIBackend, Reply, Request, TemplateBackend, make_backend
from annot.gen.errors import BudgetReached, GenerationFailed
from annot.gen.gates import apply_gates, claim_check, claim_spans, near_duplicates
from annot.gen.pipeline import generate_llm_documents
from annot.gen.settings import GateSettings, GenSettings
from annot.gen.transcripts import generate_llm_transcripts

__all__ = ["Backend", "BudgetReached", "GateSettings", "GenSettings", "GenerationFailed", "HFBackend",
           "OpenAIBackend", "Reply", "Request", "TemplateBackend", "apply_gates", "claim_check", "claim_spans",
           "generate_llm_documents", "generate_llm_transcripts", "make_backend", "near_duplicates"]
