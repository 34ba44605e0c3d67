"""The kinds of view a training batch carries (docs/method.md sections 3-4).

A DVA batch holds, per image, its original photo and its object views: the discriminative view
(the box) and, for small boxes, the background view. The data loaders produce batches keyed by
these names, the OPA view policy decides which an image gets, and the DPT loss reads them; they
live here, below all three, so that none of those layers imports another for three strings.
"""

from __future__ import annotations

ORIGINAL = "original"
DISCRIMINATIVE = "discriminative"
BACKGROUND = "background"
VIEW_KINDS = (ORIGINAL, DISCRIMINATIVE, BACKGROUND)
