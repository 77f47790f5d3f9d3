"""Span roles: the names a document's or message's `spans` use, shared by wrapping and training.

A span is {"start", "end", "role", ...} in character offsets of the text it belongs to.
"""
from __future__ import annotations

CLAIM = "claim"        # a sentence that asserts the claim (or, in a negated world, states the truth)
SUBCLAIM = "subclaim"  # a detail sentence of the claim's story
WRAPPER = "wrapper"    # text a wrapper inserted (disclaimer, notice, annotation)
MARKER = "marker"      # a document-tag marker (e.g. <DOCTAG>) a wrapper inserted
MASK = "mask"          # words held out of the loss (word_mask)
TRAIN = "train"        # a trainable region of a rendered chat (assistant turns, or everything)

# Roles a wrapper inserts (the text a "disclaimer" consists of).
INSERTED_ROLES = frozenset({WRAPPER, MARKER})
# Roles whose tokens get weight 0 whatever the run says.
ALWAYS_MASKED_ROLES = frozenset({MARKER, MASK})
# Roles whose tokens get weight 0 unless the run trains on wrapper text (`loss_on_wrapper: true`).
OPTIONALLY_MASKED_ROLES = frozenset({WRAPPER})
