"""A fake OpenAI-compatible server for tests: POST /v1/chat/completions on 127.0.0.1, in a thread.

    with FakeServer(latency=0.2, key="sk-test") as server:
        ... OpenAIBackend(model="fake", base_url=server.url, ...) ...
        server.calls, server.max_inflight

Replies are deterministic in the request body: the first line of the last user message that
`keep(line)` accepts (e.g. the claim sentence a document must state), then 120 pseudo-random words
in lines of 12 (so list-parsing stages find items, and two replies are never near-duplicates).
`script(n)` may answer the n-th call (1-based) with an error instead: (status, headers) or None.
`reply(body)` may give the reply instead: (text, top_logprobs or None); top_logprobs ([{token,
logprob}]) are sent as choices[0].logprobs.content[0].top_logprobs when the request asks for them.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VOCAB = ("amber basin cedar delta ember fjord granite harbor islet juniper kestrel lagoon meadow north orchard "
         "pebble quarry river saddle timber upland valley willow yarrow zephyr anchor beacon canal dune estuary "
         "ferry glacier hamlet inlet jetty kelp lantern marsh nettle outcrop pier reef shoal tide umber vessel "
         "wharf causeway moor heath spire cottage ledger rope sail storm harbour keel mast deck gull tern "
         "plover curlew heron otter seal whale cod herring mackerel oyster mussel crab lobster shrimp").split()


class FakeServer:
    def __init__(self, latency: float = 0.0, key: str | None = None, keep=None, script=None, reply=None):
        self.latency, self.key, self.keep, self.script, self.reply = latency, key, keep, script, reply
        self.calls: list[dict] = []
        self.inflight = self.max_inflight = 0
        self.tokens = 0  # prompt + completion tokens of the successful replies
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server.handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 would refuse a burst of connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def reply_text(self, body: dict) -> str:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        first = next((line.strip() for line in user.splitlines() if self.keep and self.keep(line.strip())), None)
        rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
        words = [rng.choice(VOCAB) for _ in range(120)]
        lines = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, 120, 12)]
        return "\n".join(([first, ""] if first else []) + lines)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.calls.append(body)
            n = len(self.calls)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.latency)
            status, payload, headers = self.answer(h, body, n)
        finally:
            with self.lock:  # out of flight before the reply is sent, so the client may start the next
                self.inflight -= 1
        self.send(h, status, payload, headers)

    def answer(self, h: BaseHTTPRequestHandler, body: dict, n: int) -> tuple[int, dict, dict | None]:
        if self.key is not None and h.headers.get("Authorization") != f"Bearer {self.key}":
            # echo the key it was given, as some servers do: the client must scrub it
            given = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
            return 401, {"error": {"message": f"Incorrect API key provided: {given}"}}, None
        failure = self.script(n) if self.script else None
        if failure:
            status, headers = failure
            return status, {"error": {"message": "try again"}}, headers
        text, top = self.reply(body) if self.reply else (self.reply_text(body), None)
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        completion = len(text.split())
        with self.lock:
            self.tokens += prompt + completion
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        if top is not None and body.get("logprobs"):
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top[:body.get("top_logprobs", 0)]}]}
        return 200, {"id": f"c{n}", "object": "chat.completion", "model": body["model"],
                     "choices": [choice],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}}, None

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
