"""
How well mailrelay classifies bounces: the confusion matrix and recipient accuracy on the
project's corpus.

    python bench/bounces.py [--errors] [--json] [--samples DIR] [--corpus DIR] [--holdout [DIR]]

Reads the committed corpus: tests/bounces/*.eml with tests/bounces/expected.json (hand-made
samples: file -> the expected report, or the list of reports when a bounce names several
recipients) and, when present, tests/bounces/corpus/ with its labels.json (bounces produced by
real MTAs, see bench/bouncecorpus/):

    {"<mta>/<case>.eml": {"type": "SoftBounce", "class": "soft", "recipients": ["a@example.org"],
                          "status": "5.2.2", "why": "how the failure was caused",
                          "failures": [{"recipient": "a@example.org", "type": "SoftBounce",
                                        "class": "soft", "why": "...", "reply": "..."}]}}

(``failures``, when present, labels each recipient on its own.)

``--holdout`` measures instead the hold-out set, tests/bounces/holdout/ (same labels.json
format): bounces from MTAs and providers the rules were not written from, made by
tests/bounces/holdout/make_holdout.py, a stand-in for the outside measure of issue 16.

Each (file, expected recipient) is one case. It prints, for the coarse classes the suppression
decision depends on (hard, soft, complaint, autoreply, unknown; see
``mailrelay.mail.bounceclassify.COARSE_CLASSES``) and for the Postmark types, the matrix of expected
(rows) by predicted (columns); class accuracy (``unknown`` predicted counts as wrong where
a class is expected), the soft-as-hard rate (soft bounces classified hard, the error that
suppresses a working address) separately, and recipient accuracy (the expected recipient is
among the reported ones; no recipient expected: none reported). ``--errors`` lists each wrong
case with the rule that decided. This is a measure of correctness, not of speed: the tests
assert the project's figures (tests/test_bounce_corpus.py) with the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailrelay.mail.bounceclassify import BOUNCE_TYPES, COARSE_CLASSES, BounceReport  # noqa: E402
from mailrelay.mail.bounceparse import parse_bounce  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "bounces"
CORPUS = SAMPLES / "corpus"
HOLDOUT = SAMPLES / "holdout"
CLASSES = ("hard", "soft", "complaint", "autoreply", "unknown")
_CLASS_SYNONYMS = {"auto-reply": "autoreply", "auto_reply": "autoreply", "autoresponder": "autoreply",
                   "spamcomplaint": "complaint", "spam-complaint": "complaint", "transient": "soft",
                   "delayed": "soft", "temporary": "soft"}


@dataclass(frozen=True)
class Expected:
    """What one case should give."""

    file: str
    type: str | None
    coarse: str
    recipient: str | None


@dataclass(frozen=True)
class Case:
    expected: Expected
    predicted_type: str
    predicted_class: str
    recipient_ok: bool
    reason: str


def coarse_class(label: str | None, type_name: str | None) -> str:
    """A label's coarse class: its ``class`` when given, else its type's."""
    if label:
        label = label.strip().lower()
        return _CLASS_SYNONYMS.get(label, label)
    return COARSE_CLASSES.get(type_name or "", "unknown")


def load_cases(samples: Path = SAMPLES, corpus: Path = CORPUS) -> list[tuple[Path, list[Expected]]]:
    """Every labelled bounce: (its path, the cases it holds)."""
    out: list[tuple[Path, list[Expected]]] = []
    expected = json.loads((samples / "expected.json").read_text())
    for name in sorted(expected):
        value = expected[name]
        wants = value if isinstance(value, list) else [value]
        out.append((samples / name, [Expected(name, w["type"], coarse_class(w.get("class"), w["type"]),
                                              w.get("recipient")) for w in wants]))
    out.extend(load_labels(corpus, "corpus/"))
    return out


def load_labels(directory: Path, prefix: str) -> list[tuple[Path, list[Expected]]]:
    """The bounces a ``labels.json`` in ``directory`` labels (none when it has none); case files
    are named ``<prefix><name>``."""
    out: list[tuple[Path, list[Expected]]] = []
    labels_path = directory / "labels.json"
    if not labels_path.exists():
        return out
    labels = json.loads(labels_path.read_text())
    for name in sorted(labels):
        label = labels[name]
        failures = label.get("failures") or []
        if failures:   # per recipient, when the label says so
            wants = [Expected(f"{prefix}{name}", f.get("type") or label.get("type"),
                              coarse_class(f.get("class"), f.get("type") or label.get("type")), f.get("recipient"))
                     for f in failures]
        else:
            klass = coarse_class(label.get("class"), label.get("type"))
            wants = [Expected(f"{prefix}{name}", label.get("type"), klass, r)
                     for r in label.get("recipients") or [None]]
        out.append((directory / name, wants))
    return out


def _report_for(reports: list[BounceReport], recipient: str | None) -> BounceReport:
    if recipient:
        for report in reports:
            if (report.recipient or "").lower() == recipient.lower():
                return report
    return reports[0]


def evaluate(labelled: list[tuple[Path, list[Expected]]]) -> list[Case]:
    cases = []
    for path, wants in labelled:
        reports = parse_bounce(path.read_bytes())
        found = {(r.recipient or "").lower() for r in reports}
        for want in wants:
            report = _report_for(reports, want.recipient)
            if want.recipient:
                recipient_ok = want.recipient.lower() in found
            else:
                recipient_ok = all(r.recipient is None for r in reports)
            cases.append(Case(want, report.type.name, report.type.coarse_class, recipient_ok, report.reason))
    return cases


@dataclass(frozen=True)
class Figures:
    cases: int
    class_accuracy: float
    type_accuracy: float
    recipient_accuracy: float
    soft: int
    soft_as_hard: int

    @property
    def soft_as_hard_rate(self) -> float:
        return self.soft_as_hard / self.soft if self.soft else 0.0


def figures(cases: list[Case]) -> Figures:
    n = len(cases) or 1
    soft = [c for c in cases if c.expected.coarse == "soft"]
    typed = [c for c in cases if c.expected.type]
    return Figures(
        cases=len(cases),
        class_accuracy=sum(c.predicted_class == c.expected.coarse for c in cases) / n,
        type_accuracy=sum(c.predicted_type == c.expected.type for c in typed) / (len(typed) or 1),
        recipient_accuracy=sum(c.recipient_ok for c in cases) / n,
        soft=len(soft),
        soft_as_hard=sum(c.predicted_class == "hard" for c in soft))


#: Column headings of the type matrix (the rows spell the names out).
_SHORT = {"HardBounce": "Hard", "Transient": "Trans", "Unsubscribe": "Unsub", "AutoResponder": "Auto",
          "AddressChange": "AddrCh", "DnsError": "DNS", "SpamNotification": "SpamN", "Unknown": "Unkn",
          "SoftBounce": "Soft", "VirusNotification": "Virus", "ChallengeVerification": "Chall",
          "BadEmailAddress": "BadAddr", "SpamComplaint": "Compl", "ManuallyDeactivated": "Manual",
          "Blocked": "Block", "DMARCPolicy": "DMARC"}


def matrix(rows: list[tuple[str, str]], labels: list[str]) -> str:
    """A confusion matrix: expected (rows) by predicted (columns)."""
    counts = Counter(rows)
    used = [label for label in labels if any(label in pair for pair in counts)]
    first = max([len(label) for label in used] + [20]) + 1
    width = max([len(_SHORT.get(label, label)) for label in used] + [5]) + 1
    lines = ["expected \\ predicted".ljust(first) + "".join(_SHORT.get(label, label).rjust(width) for label in used)]
    for expected in used:
        if not any(e == expected for e, _ in counts):
            continue
        lines.append(expected.ljust(first) + "".join(str(counts[(expected, p)] or ".").rjust(width) for p in used))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="directory of expected.json (tests/bounces)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="directory of labels.json (tests/bounces/corpus)")
    parser.add_argument("--holdout", type=Path, nargs="?", const=HOLDOUT, default=None, metavar="DIR",
                        help="measure only the hold-out set, DIR/labels.json (default tests/bounces/holdout): "
                             "bounces written apart from the rules, a stand-in for an outside measure")
    parser.add_argument("--errors", action="store_true", help="list every wrong case and the rule that decided")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.holdout is not None:
        cases = evaluate(load_labels(args.holdout, "holdout/"))
    else:
        cases = evaluate(load_cases(args.samples, args.corpus))
    result = figures(cases)
    if args.json:
        print(json.dumps({**result.__dict__, "soft_as_hard_rate": result.soft_as_hard_rate}))
        return 0
    if args.holdout is not None:
        print(f"{result.cases} cases of the hold-out set {args.holdout}\n")
    else:
        print(f"{result.cases} cases ({sum(c.expected.file.startswith('corpus/') for c in cases)} from real MTAs)\n")
    print("coarse class")
    print(matrix([(c.expected.coarse, c.predicted_class) for c in cases], list(CLASSES)))
    print("\nPostmark type")
    types = sorted(BOUNCE_TYPES, key=lambda name: BOUNCE_TYPES[name].code)
    print(matrix([(c.expected.type or "-", c.predicted_type) for c in cases], types))
    print(f"\nclass accuracy      {result.class_accuracy:7.1%}")
    print(f"type accuracy       {result.type_accuracy:7.1%}")
    print(f"soft as hard        {result.soft_as_hard_rate:7.1%}  ({result.soft_as_hard} of {result.soft} soft bounces)")
    print(f"recipient accuracy  {result.recipient_accuracy:7.1%}")
    if args.errors:
        print("\nwrong cases")
        for c in cases:
            if c.predicted_class != c.expected.coarse or c.predicted_type != (c.expected.type or c.predicted_type) \
                    or not c.recipient_ok:
                print(f"  {c.expected.file} <{c.expected.recipient}>: expected {c.expected.type} "
                      f"({c.expected.coarse}), got {c.predicted_type} ({c.predicted_class})"
                      f"{'' if c.recipient_ok else ', recipient wrong'}: {c.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
