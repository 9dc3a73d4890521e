"""``fedser corpus check``: counts per session x label and per speaker (x label), skips, and deviations.

A real IEMOCAP copy is compared with its known totals (notes §2.4); a synthetic IEMOCAP by
session x label, and any other synthetic corpus (RAVDESS, CREMA-D, MSP-Podcast) by speaker x
label, with the manifest its writer left beside it. Readers look at headers only; the check also reads every
kept utterance's samples once, so a clip of NaNs is a skip here and not a surprise in training.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from common.audio import AudioError, verify_samples
from common.corpora.base import Scan, Skip
from common.corpora.iemocap import (
    DEFAULT_LABEL_MAP,
    KNOWN_PER_SESSION,
    KNOWN_TOTALS,
    Subset,
    is_improvised,
)
from common.corpora.synthetic import MANIFEST_NAME


def summarize(
    scan: Scan, *, classes: Sequence[str], label_map: Mapping[str, str] = DEFAULT_LABEL_MAP,
    subset: Subset = "all", read_samples: bool = True,
) -> dict[str, Any]:
    """The check report as a JSON-ready dict (keys documented in docs/commands.md).

    ``read_samples``: first read every kept utterance's audio (:func:`verify_audio`); utterances
    that fail are skips of the report.
    """
    if read_samples:
        scan = verify_audio(scan)
    utts = scan.utterances
    labels = [c for c in classes if any(u.label == c for u in utts)] or list(classes)
    sessions = sorted({u.session for u in utts if u.session is not None})
    cells = Counter((u.session, u.label) for u in utts)
    by_speaker: dict[str, Counter[str | None]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, Counter())[u.label] += 1
    per_session = [
        {"session": s, "labels": {c: cells[(s, c)] for c in labels}, "total": sum(cells[(s, c)] for c in labels)}
        for s in sessions
    ]
    report: dict[str, Any] = {
        "corpus": scan.corpus,
        "root": str(scan.root),
        "subset": subset,
        "utterances": len(utts),
        "per_session": per_session,
        "per_label": {c: n for c, n in Counter(u.label for u in utts).most_common() if c is not None},
        "per_speaker": dict(sorted(Counter(u.speaker for u in utts).items())),
        # The corpora with many speakers are partitioned by speaker: what each such node would hold.
        "per_speaker_label": {speaker: {c: n for c in labels if (n := by_speaker[speaker][c])}
                              for speaker in sorted(by_speaker)},
        "skipped": [{"path": str(s.path), "reason": s.reason, "kind": s.kind} for s in scan.skipped],
        "skipped_by_reason": scan.skip_reasons(),
        "skipped_by_kind": scan.skip_counts(),
        # Left out by the label map on purpose (IEMOCAP's fru, xxx, ...): not skips, not deviations.
        "excluded_by_label_map": dict(sorted(scan.excluded.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    report["reference"], expected = _expected(scan, label_map, subset)
    by_session = {s: {c: cells[(s, c)] for c in labels} for s in sessions}
    report["deviations"] = _deviations(len(utts), by_session, expected, "Session{}") if expected is not None else []
    if expected is None and (speakers := _expected_by_speaker(scan, label_map)) is not None:
        report["reference"] = "synthetic corpus manifest"
        report["deviations"] = _deviations(len(utts), report["per_speaker_label"], speakers, "speaker {}")
    return report


def verify_audio(scan: Scan) -> Scan:
    """``scan`` without the utterances whose samples do not all read as finite numbers (each file
    read once, a block at a time): those become skips (non-finite samples, unreadable audio, ...)."""
    kept, bad = [], []
    for u in scan.utterances:
        try:
            verify_samples(u.path)
        except AudioError as exc:
            bad.append(Skip(u.path, exc.reason))
        else:
            kept.append(u)
    return replace(scan, utterances=kept, skipped=[*scan.skipped, *bad])


def _expected(
    scan: Scan, label_map: Mapping[str, str], subset: Subset
) -> tuple[str | None, dict[int, dict[str, int]] | None]:
    """What a complete copy holds: the writer's manifest, or IEMOCAP's known per-session table."""
    if scan.corpus != "iemocap":
        return None, None
    manifest = scan.root / MANIFEST_NAME
    if manifest.is_file():
        rows = json.loads(manifest.read_text(encoding="utf-8"))["utterances"]
        table: dict[int, Counter[str]] = {}
        for row in rows:
            label = label_map.get(row["raw_label"])
            if label is None or (subset != "all" and is_improvised(row["id"]) != (subset == "improvised")):
                continue
            table.setdefault(int(row["session"]), Counter())[label] += 1
        return "synthetic corpus manifest", {s: dict(c) for s, c in table.items()}
    if dict(label_map) == DEFAULT_LABEL_MAP and subset in KNOWN_PER_SESSION:
        return f"IEMOCAP known totals ({KNOWN_TOTALS[subset]} utterances, {subset})", KNOWN_PER_SESSION[subset]
    return None, None


def _expected_by_speaker(scan: Scan, label_map: Mapping[str, str]) -> dict[str, Counter[str]] | None:
    """What a synthetic corpus other than IEMOCAP holds by speaker x label: its writer's manifest
    through the label map (None without one)."""
    manifest = scan.root / MANIFEST_NAME
    if scan.corpus == "iemocap" or not manifest.is_file():
        return None
    table: dict[str, Counter[str]] = {}
    for row in json.loads(manifest.read_text(encoding="utf-8"))["utterances"]:
        if (label := label_map.get(row["raw_label"])) is not None:
            table.setdefault(str(row["speaker"]), Counter())[label] += 1
    return table


def _deviations(total: int, found: Mapping[Any, Mapping[str, int]], expected: Mapping[Any, Mapping[str, int]],
                name: str) -> list[str]:
    """Every mismatch of ``found`` (group -> label -> count) with ``expected``; groups are
    written ``name.format(group)`` (``Session{}``, ``speaker {}``)."""
    out = []
    want_total = sum(sum(c.values()) for c in expected.values())
    if total != want_total:
        out.append(f"total: found {total}, expected {want_total}")
    # Both sides' groups and labels: a relabeled file is one label short and another one over, and
    # an extra label (or speaker) the reference does not have at all is a deviation too.
    for group in sorted({*expected, *found}):
        got, want = found.get(group, {}), expected.get(group, {})
        out += [f"{name.format(group)} {label}: found {got.get(label, 0)}, expected {want.get(label, 0)}"
                for label in sorted({*got, *want}) if got.get(label, 0) != want.get(label, 0)]
    return out
