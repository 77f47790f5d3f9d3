"""The response cache: a crashed or repeated generation pays for no reply twice.

    cache = ResponseCache(Path("~/.cache/annot/responses").expanduser())
    key = cache.key(backend, request)          # (backend, model, messages, sampling settings, seed)
    reply = cache.get(key) or backend_call()   # then cache.put(key, reply)

One small JSON file per reply under <root>/<key[:2]>/<key>.json, written atomically, so threads and
processes share the cache without locks and a kill never leaves a half-written entry. A file
holds the reply text and token counts, never a header (so never an API key).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from annot.gen.backends import Reply, Request
from annot.io import atomic_write_text


def default_cache_dir() -> Path:
    from annot.models import cache_dir

    return cache_dir() / "responses"


class ResponseCache:
    """Replies by request key; `root=None` is a cache that remembers nothing."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self.hits = 0

    def key(self, backend, request: Request) -> str:
        material = {"backend": backend.name, "model": backend.model, "messages": list(request.messages),
                    "settings": {k: v for k, v in request.sampling().items() if k != "seed"},
                    "seed": request.seed}
        return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Reply | None:
        if self.root is None:
            return None
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
            reply = Reply(data["text"], int(data["prompt_tokens"]), int(data["completion_tokens"]),
                          data.get("finish_reason", "stop"), cached=True, top_logprobs=data.get("top_logprobs"))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: a miss, and the next put repairs it
        self.hits += 1
        return reply

    def put(self, key: str, reply: Reply) -> None:
        if self.root is not None:
            atomic_write_text(self.path(key), json.dumps(reply.to_json(), ensure_ascii=False, sort_keys=True))
