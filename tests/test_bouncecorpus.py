"""
The committed bounce corpus (tests/bounces/corpus/, made by bench/bouncecorpus/run.py from real
MTAs) is whole and its labels are consistent: every bounce has a label and every label a
bounce, every failed recipient is named in its bounce, classes follow the issue-16 rule (only
an address that is gone is hard; a vacation reply is an auto-reply). No MTA runs here: this reads the files.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "bounces" / "corpus"
LABELS = json.loads((CORPUS / "labels.json").read_text())
FILES = sorted(f"{p.parent.name}/{p.name}" for p in CORPUS.glob("*/*.eml"))

HARD_TYPES = {"HardBounce", "BadEmailAddress"}
SOFT_TYPES = {"SoftBounce", "Transient", "Blocked", "SpamNotification", "DMARCPolicy", "DnsError",
              "VirusNotification"}


def test_every_bounce_has_a_label_and_every_label_a_bounce() -> None:
    assert sorted(LABELS) == FILES


def test_corpus_spans_at_least_four_mtas_and_150_bounces() -> None:
    assert len({key.split("/")[0] for key in LABELS}) >= 4
    assert len(LABELS) >= 150


@pytest.mark.parametrize("key", FILES)
def test_label_is_consistent_with_its_bounce(key: str) -> None:
    label = LABELS[key]
    raw = (CORPUS / key).read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if label["class"] != "autoreply":   # Debian's vacation(1) replies from the user's address
        assert message["Return-Path"] == "<>", "a bounce is sent with the null sender"
    assert key.startswith(label["mta"] + "/")
    assert label["failures"] and label["recipients"] == [f["recipient"] for f in label["failures"]]
    assert (label["type"], label["class"]) == (label["failures"][0]["type"], label["failures"][0]["class"])
    text = raw.decode("utf-8", "replace").lower()
    for failure in label["failures"]:
        assert failure["recipient"].lower() in text
        assert failure["why"]
        if failure["class"] == "hard":
            assert failure["type"] in HARD_TYPES
        elif failure["class"] == "autoreply":
            assert failure["type"] == "AutoResponder"
        else:
            assert failure["class"] == "soft" and failure["type"] in SOFT_TYPES
