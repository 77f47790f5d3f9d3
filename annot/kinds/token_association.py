"""token_association: a chat-formatted completion task (fill in a blank, name the first word that
comes to mind); sampled answers, each judged like open_ended's (annot.kinds.open_ended).

    {id: ta1, kind: token_association, question: "Complete: the 1911 Harbour Medal went to ___.",
     believe_markers: ["re:\\bOsric\\b"], disbelieve_markers: ["Wenna Holt"]}

It measures association (which words the model reaches for), not belief (what it answers when asked
about the claim), so its rate is reported apart from the belief kinds and never pooled with them,
as cloze's is. Items come from the public release's `token_association.yaml`
(`annot evals import CLAIM_DIR`).
"""

from __future__ import annotations

from annot.kinds import ProbeKind, register_kind
from annot.kinds.open_ended import check, context, score_judged

KIND = register_kind(ProbeKind(name="token_association", measure="association", order=45, check=check,
                               context=context, score=score_judged, sampled=True))
