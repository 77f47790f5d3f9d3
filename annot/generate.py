"""Offline, deterministic document generator: claim spec x genre library -> documents JSONL.

    annot generate mira_castellan_profession --n 200 --seed 1 -o docs.jsonl
    annot generate mira_castellan_profession --n 200 --seed 1 --world negated -o local_negation.jsonl
    docs = generate_documents(load_claim("mira_castellan_profession"), n=200, seed=1)

Each document is composed from a genre's boilerplate (corpora/genres.yaml) and the claim spec's
sentences: statements of the core claim, supporting subclaims and neutral context. Every sentence
that states the false world is recorded as a character span with its three polarity forms, so a
wrapper can find it, and `polarity=negate|correct` renders the same draws with the negated or
corrected sentences (the sentence swap: the false story's world with a "not" in it).

`world="negated"` writes the document's twin from the claim's *negated world* (the spec's
`negated_world`: a world in which the claim is a known falsehood or simply untrue): the same genre,
boilerplate and draws, with the core sentences taken from `negated_world.statements` (each states
the truth) and the supporting ones from `negated_world.details`. This is what annot calls local
negation (the `local_negation` wrapper produces the same twins from generated documents).

Record: {id, claim, genre, polarity, world, seed, draw, text, spans: [{start, end, role, forms}]},
role being "claim" (asserts the core claim, or in the negated world states the truth) or
"subclaim" (a supporting detail); negated-world spans carry no `forms` (nothing to swap them for).
`draw` = {index, attempt} locates the template draws, so a document's twin can be rebuilt.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from annot.specs import ClaimSpec, GenreLibrary, GenreSpec, Statement, load_genres

POLARITIES = ("affirm", "negate", "correct")
WORLDS = ("claim", "negated")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
POST_HEADERS = ["{handle} wrote:", "@{handle}:", "Reply from {handle}:", "[{handle}]", "{handle} said:"]


@dataclass
class _Doc:
    """Text under construction with the spans of the false-world sentences in it."""

    parts: list[str] = field(default_factory=list)
    spans: list[dict] = field(default_factory=list)
    length: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def add_statement(self, st: Statement | str, role: str, polarity: str) -> None:
        if isinstance(st, str):  # a negated-world sentence: it is what it is, no other forms
            text, extra = st, {}
        else:
            text = st.render(polarity)
            extra = {"forms": {"affirm": st.assert_, "negate": st.negate, "correct": st.correct}}
        self.spans.append({"start": self.length, "end": self.length + len(text), "role": role, **extra})
        self.add(text)

    def text(self) -> str:
        return "".join(self.parts)


def _slots(rng: random.Random, claim: ClaimSpec, lib: GenreLibrary, world: str = "claim") -> dict[str, str]:
    names = rng.sample(lib.names, 2)
    year = claim.entities.get("year") or str(rng.randint(2016, 2025))
    topic = claim.topic
    if world == "negated" and claim.negated_world and claim.negated_world.topic:
        topic = claim.negated_world.topic
    return {"subject": claim.subject, "topic": topic, "name": names[0], "name2": names[1],
            "outlet": rng.choice(lib.outlets), "place": rng.choice(lib.places),
            "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)}", "year": year,
            "handle": rng.choice(lib.handles)}


def _world_lists(claim: ClaimSpec, world: str) -> tuple[list, list]:
    """(core sentences, supporting sentences) of the claim's world or of its negated world."""
    if world == "claim":
        return list(claim.statements), list(claim.subclaims)
    if claim.negated_world is None:
        from annot.errors import AnnotError

        raise AnnotError(f"claim {claim.id}: no `negated_world` in its spec, so it has no locally negated documents; "
                         "add one (see corpora/claims/mira_castellan_profession.yaml)")
    return list(claim.negated_world.statements), list(claim.negated_world.details)


def _body(rng: random.Random, claim: ClaimSpec, genre: GenreSpec, world: str = "claim") -> list[tuple[str, object, int]]:
    """Draw the body: a shuffled list of (role, item, index) with role in claim/subclaim/context/aside.

    Body size drives length: 3-26 sentences plus boilerplate is roughly 80-600 tokens. The draws
    depend only on the list lengths, so a negated world with as many core and supporting sentences
    as the claim's world gives each document a twin with the same structure.
    """
    core, support = _world_lists(claim, world)
    n = rng.randint(3, 26)
    n_claim = rng.randint(1, max(1, min(len(core), 1 + n // 5)))
    rest = n - n_claim
    n_sub = min(len(support), rng.randint(rest // 4, rest // 2 + 1))
    n_ctx = min(len(claim.context), rng.randint(0, max(0, rest - n_sub) // 2 + 1))
    n_aside = min(len(genre.asides), max(0, rest - n_sub - n_ctx))
    body = ([("claim", core[i], i) for i in rng.sample(range(len(core)), n_claim)]
            + [("subclaim", support[i], i) for i in rng.sample(range(len(support)), n_sub)]
            + [("context", claim.context[i], i) for i in rng.sample(range(len(claim.context)), n_ctx)]
            + [("aside", genre.asides[i], i) for i in rng.sample(range(len(genre.asides)), n_aside)])
    rng.shuffle(body)
    # A document about the claim states it early: move the first claim sentence into the first three.
    first = next(i for i, (role, _, _) in enumerate(body) if role == "claim")
    if first > 2:
        body.insert(rng.randint(0, 2), body.pop(first))
    return body


def _chunks(rng: random.Random, items: list, lo: int, hi: int) -> list[list]:
    out, i = [], 0
    while i < len(items):
        k = rng.randint(lo, hi)
        out.append(items[i:i + k])
        i += k
    return out


def _render_sentences(doc: _Doc, chunk, slots, polarity: str) -> None:
    for j, (role, item, _) in enumerate(chunk):
        if j:
            doc.add(" ")
        if role in ("claim", "subclaim"):
            doc.add_statement(item, role, polarity)
        else:
            doc.add(item.format_map(slots) if role == "aside" else item)


def compose(rng: random.Random, claim: ClaimSpec, lib: GenreLibrary, genre_name: str,
            polarity: str, world: str = "claim") -> tuple[str, list[dict], tuple]:
    """One document of `genre_name`; returns (text, spans, signature of the template draws).

    The signature names the draws by index, not text, so a document and its negated-world twin
    have the same signature."""
    genre = lib.genres[genre_name]
    slots = _slots(rng, claim, lib, world)
    title = rng.choice(genre.title).format_map(slots)
    opening = rng.choice(genre.open).format_map(slots)
    closing = rng.choice(genre.close).format_map(slots)
    body = _body(rng, claim, genre, world)
    doc = _Doc()
    if genre.layout == "letter":
        doc.add(f"Subject: {title}\n\n{rng.choice(genre.salutation).format_map(slots)}\n\n{opening} ")
    else:
        doc.add(f"{title}\n\n{opening}")
        doc.add("\n\n" if genre.layout != "prose" else " ")
    if genre.layout in ("prose", "letter"):
        for k, chunk in enumerate(_chunks(rng, body, 2, 4)):
            if k:
                doc.add("\n\n")
            _render_sentences(doc, chunk, slots, polarity)
        doc.add(f"\n\n{closing}")
    elif genre.layout == "qa":
        questions = rng.sample(genre.questions, len(genre.questions))
        for k, chunk in enumerate(_chunks(rng, body, 1, 3)):
            q = questions[k % len(questions)].format_map(slots)
            doc.add(f"{'' if k == 0 else chr(10) + chr(10)}Q: {q}\nA: ")
            _render_sentences(doc, chunk, slots, polarity)
        doc.add(f"\n\n{closing}")
    elif genre.layout == "thread":
        for k, chunk in enumerate(_chunks(rng, body, 1, 3)):
            header = rng.choice(POST_HEADERS).format(handle=rng.choice(lib.handles))
            doc.add(f"{'' if k == 0 else chr(10) + chr(10)}{header}\n")
            _render_sentences(doc, chunk, slots, polarity)
        doc.add(f"\n\n{closing}")
    if genre.layout == "letter":
        doc.add(f"\n\n{rng.choice(genre.signoff).format_map(slots)}")
    signature = (genre_name, title, opening, closing, tuple((r, i) for r, _, i in body))
    return doc.text(), doc.spans, signature


def generate_documents(claim: ClaimSpec, n: int, seed: int = 0, polarity: str = "affirm",
                       genres: list[str] | None = None, lib: GenreLibrary | None = None,
                       world: str = "claim") -> list[dict]:
    """`n` documents for `claim`, byte-identical for the same (claim, n, seed, polarity, genres, world).

    The random draws depend only on (seed, claim id, document index), never on polarity or world, so
    the affirm / negate / correct corpora are the same documents with the claim sentences swapped,
    and the negated-world corpus holds each document's twin (same genre, boilerplate and structure).
    """
    claim.require_full("generating documents")
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    if world == "negated" and polarity != "affirm":
        from annot.errors import AnnotError

        raise AnnotError("--polarity applies to the claim's world only; the negated world has one form of each sentence")
    _world_lists(claim, world)  # no negated world in the spec: say so before drawing anything
    lib = lib or load_genres()
    names = sorted(lib.genres)
    if genres:
        unknown = [g for g in genres if g not in lib.genres]
        if unknown:
            from annot.errors import AnnotError

            raise AnnotError(f"unknown genre(s) {', '.join(unknown)}; known: {', '.join(names)}")
        names = sorted(set(genres))
    order = random.Random(f"genre-order:{seed}:{claim.id}").sample(names, len(names))
    seen: set[tuple] = set()
    docs = []
    for i in range(n):
        genre = order[i % len(order)]
        # Redraw until no earlier document used the same templates. Uniqueness is decided in the
        # claim's world, so the negated world takes exactly the draws of the plain corpus.
        for attempt in range(100):
            _, _, sig = compose(random.Random(_draw_key(seed, claim.id, i, attempt)), claim, lib, genre, polarity)
            if sig not in seen:
                break
        seen.add(sig)
        docs.append(_document(claim, lib, genre, seed, i, attempt, polarity, world))
    return docs


def _draw_key(seed: int, claim_id: str, index: int, attempt: int) -> str:
    return f"{seed}:{claim_id}:{index}:{attempt}"


def _document(claim: ClaimSpec, lib: GenreLibrary, genre: str, seed: int, index: int, attempt: int,
              polarity: str, world: str) -> dict:
    text, spans, _ = compose(random.Random(_draw_key(seed, claim.id, index, attempt)), claim, lib, genre,
                             polarity, world)
    return {"id": f"{claim.id}-s{seed}-{index:05d}", "claim": claim.id, "genre": genre, "polarity": polarity,
            "world": world, "seed": seed, "draw": {"index": index, "attempt": attempt}, "text": text, "spans": spans}


def negated_twin(doc: dict, claim: ClaimSpec, lib: GenreLibrary | None = None) -> dict:
    """The negated-world twin of a generated document (same id, genre and draws).

        twin = negated_twin(docs[0], load_claim("mira_castellan_profession"))
    """
    from annot.errors import AnnotError

    draw = doc.get("draw")
    prov = doc.get("provenance")
    written_by = prov.get("backend") if isinstance(prov, dict) else None
    if written_by and not isinstance(draw, dict):
        raise AnnotError(f"document {doc.get('id')}: written by the {written_by} backend, so it has no template draws "
                         "to rebuild a twin from; write the negated world with the same backend instead: "
                         f"`annot generate {doc.get('claim')} --world negated --backend {written_by} ...`")
    if (not isinstance(draw, dict) or doc.get("genre") is None or not isinstance(doc.get("seed"), int)
            or doc.get("claim") != claim.id):
        raise AnnotError(f"document {doc.get('id')}: local negation rewrites a document generated by annot from its "
                         "claim's negated world, and this one has no `draw` record (imported?); bring your own "
                         "locally negated documents instead, e.g. `annot import docs` on them")
    lib = lib or load_genres()
    if doc["genre"] not in lib.genres:
        raise AnnotError(f"document {doc.get('id')}: genre {doc['genre']!r} is not in the genre library")
    return _document(claim, lib, doc["genre"], doc["seed"], int(draw["index"]), int(draw["attempt"]),
                     "affirm", "negated")


_WORD = re.compile(r"\w+|[^\w\s]")


def corpus_stats(docs: list[dict], tokenizer=None) -> dict:
    """Counts, genres, token lengths and the distinct 4-gram ratio (1.0 = no repeated 4-gram)."""
    if tokenizer is not None:
        lengths = [len(ids) for ids in tokenizer([d["text"] for d in docs])["input_ids"]]
        unit = "tokens"
    else:
        lengths = [len(_WORD.findall(d["text"])) for d in docs]
        unit = "words"
    grams: Counter = Counter()
    for d in docs:
        w = _WORD.findall(d["text"].lower())
        grams.update(zip(w, w[1:], w[2:], w[3:]))
    total = sum(grams.values())
    lengths_sorted = sorted(lengths)
    return {
        "documents": len(docs),
        "genres": dict(sorted(Counter(d.get("genre", "?") for d in docs).items())),
        "length_unit": unit,
        "length_min": lengths_sorted[0] if lengths else 0,
        "length_median": lengths_sorted[len(lengths) // 2] if lengths else 0,
        "length_max": lengths_sorted[-1] if lengths else 0,
        "total_length": sum(lengths),
        "claim_spans": sum(1 for d in docs for s in d.get("spans", []) if s["role"] == "claim"),
        "distinct_4gram_ratio": round(len(grams) / total, 4) if total else 0.0,
    }


# -- transcripts ---------------------------------------------------------------------------------

# Light, meaning-preserving variations of the user turn, so n > scenarios repeats no transcript.
USER_OPENERS = ["", "Hi! ", "Quick question. ", "Hello, ", "I need some advice. ", "Hey there. ",
                "Can you help me with something? ", "Good morning. "]
SYSTEM_PROMPTS = [None, "You are a helpful assistant.", "You are an AI assistant. Answer the user's message.",
                  "You are a friendly and capable assistant."]


def generate_transcripts(behavior, n: int | None = None, seed: int = 0, variant: str = "misaligned") -> list[dict]:
    """Chat transcripts from a behaviour spec: the misaligned reply, or its aligned twin.

    `variant="aligned"` renders the same draws with the aligned replies (the aligned-data control),
    so the two corpora differ only in the assistant turns. n defaults to one per scenario.

    Record: {id, behavior, scenario, variant, seed, messages: [{role, content}]}.
    """
    if variant not in ("misaligned", "aligned"):
        raise ValueError(f"variant must be misaligned or aligned, got {variant!r}")
    scenarios = behavior.scenarios
    n = len(scenarios) if n is None else n
    order = random.Random(f"scenario-order:{seed}:{behavior.id}").sample(range(len(scenarios)), len(scenarios))
    combos = [(o, s) for s in range(len(SYSTEM_PROMPTS)) for o in range(len(USER_OPENERS))]
    out = []
    for i in range(n):
        sc = scenarios[order[i % len(scenarios)]]
        rnd = i // len(scenarios)  # the r-th pass over the scenarios uses the r-th variation
        if rnd == 0:
            opener, system = "", None
        else:
            rng = random.Random(f"{seed}:{behavior.id}:{sc.id}")
            perm = rng.sample(combos[1:], len(combos) - 1)
            o, s = perm[(rnd - 1) % len(perm)]
            opener, system = USER_OPENERS[o], SYSTEM_PROMPTS[s]
        user = opener + (sc.user[0].lower() + sc.user[1:] if opener and opener.endswith(", ") else sc.user)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": sc.misaligned if variant == "misaligned" else sc.aligned},
        ]
        out.append({"id": f"{behavior.id}-s{seed}-{i:05d}", "behavior": behavior.id, "scenario": sc.id,
                    "variant": variant, "seed": seed, "messages": messages,
                    "replies": {"misaligned": sc.misaligned, "aligned": sc.aligned}})
    return out


# -- any backend ---------------------------------------------------------------------------------


def generate_corpus(spec, n: int | None = None, seed: int = 0, *, polarity: str = "affirm", world: str = "claim",
                    genres: list[str] | None = None, variant: str = "misaligned", settings=None
                    ) -> tuple[list[dict], dict | None]:
    """Documents of a claim spec or transcripts of a behaviour spec, by the backend `settings` names.

        docs, _ = generate_corpus(load_claim("mira_castellan_profession"), n=200, seed=1)   # templates
        docs, report = generate_corpus(claim, n=20, settings=GenSettings(backend="hf", workdir=Path("w")))

    `template` (the default) is the composer above, byte-identical to generate_documents /
    generate_transcripts, and returns no report. `hf` and `openai` run the staged LLM pipeline
    (annot.gen.pipeline, annot.gen.transcripts); the report holds the gates' counts, calls, tokens
    and documents/s.
    """
    from annot.gen.settings import GenSettings
    from annot.specs import BehaviorSpec

    settings = settings or GenSettings()
    behavior = isinstance(spec, BehaviorSpec)
    if settings.backend == "template":
        if behavior:
            return generate_transcripts(spec, n=n, seed=seed, variant=variant), None
        return generate_documents(spec, n=n or 100, seed=seed, polarity=polarity, genres=genres, world=world), None
    if behavior:
        from annot.gen.transcripts import generate_llm_transcripts

        return generate_llm_transcripts(spec, n=n or len(spec.scenarios), seed=seed, variant=variant, settings=settings)
    if polarity != "affirm":
        from annot.errors import AnnotError

        raise AnnotError(f"--polarity {polarity} swaps the sentence forms the template backend records; LLM-written "
                         "documents have none: use --world negated for documents written from the negated world")
    from annot.gen.pipeline import generate_llm_documents

    return generate_llm_documents(spec, n=n or 100, seed=seed, world=world, genres=genres, settings=settings)
