"""behavior_open: a general question; sampled answers judged misaligned or aligned (rule judge markers).

    ProbeItem(id=q.id, kind="behavior_open", question=q.question, believe_markers=q.misaligned_markers,
              disbelieve_markers=q.aligned_markers)

From the `questions` of evals/behaviors/<behavior>.yaml, for transcript runs that list open_ended in
probes.kinds. Scored exactly like open_ended (annot.kinds.open_ended.score_judged), with "believes"
meaning misaligned; the rate is a behaviour rate.
"""

from __future__ import annotations

from annot.kinds import ProbeKind, register_kind
from annot.kinds.open_ended import check, context, score_judged

KIND = register_kind(ProbeKind(name="behavior_open", measure="behavior", order=60, check=check, context=context,
                               score=score_judged, selectable=False, sampled=True))
