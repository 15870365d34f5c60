"""The choice of h_bg among the scored candidates: the best score, or a person's override."""

from __future__ import annotations

from dataclasses import dataclass

from generator.discovery.config import ConfigError, Override, ScoringConfig
from generator.discovery.scoring import CandidateScore


class NoPlausibleDirection(ValueError):
    """No candidate and sign scored above the floor: saving one would only fail later, in synthesis."""


@dataclass(frozen=True)
class Choice:
    """The chosen candidate index and sign, how it was chosen, and its score."""

    index: int
    sign: int
    chosen_by: str
    score: CandidateScore


def choose_direction(scores: list[CandidateScore], count: int, override: Override | None = None) -> Choice:
    """The best-scored (index, sign), or the override's when one is given (checked against K)."""
    by_key = {(score.index, score.sign): score for score in scores}
    if override is not None:
        check_override(override, count)
        return Choice(override.index, override.sign, "override", by_key[(override.index, override.sign)])
    if not scores:
        raise ValueError("no candidates were scored")
    best = max(scores, key=lambda score: (score.total, -score.index, score.sign))
    return Choice(best.index, best.sign, "automatic", best)


def check_override(override: Override | None, count: int) -> None:
    """Raise a clear error when an override names a candidate that does not exist."""
    if override is not None and override.index >= count:
        raise ConfigError(f"discover.override.index {override.index} is out of range: there are {count} "
                          f"candidate directions (0..{count - 1})")


def check_plausible(choice: Choice, scores: list[CandidateScore], min_score: float, scoring: ScoringConfig) -> str | None:
    """Stop an automatic choice whose score is not above `min_score`, saying what rejected the
    masks and what to try; for an override, return the same finding as a warning instead."""
    if choice.score.total > min_score:
        return None
    scored = len(scores) * scoring.batch_size
    rejected: dict[str, int] = {}
    for score in scores:
        for name, count in score.rejected_by.items():
            rejected[name] = rejected.get(name, 0) + count
    out_of_range = round(sum((1 - score.in_range_rate) * scoring.batch_size for score in scores))
    by_filter = ", ".join(f"{name} {count}" for name, count in rejected.items() if count) or "none"
    finding = (f"the best candidate (direction {choice.index}, sign {choice.sign:+d}) scores "
               f"{choice.score.total:.3f}, not above discover.min_score {min_score:g}. Of {scored} masks scored "
               f"({len(scores)} candidates and signs x {scoring.batch_size}), the filters rejected: {by_filter}; "
               f"{out_of_range} had a foreground fraction outside [{scoring.foreground_min:g}, "
               f"{scoring.foreground_max:g}] (discover.scoring.foreground_min/max)")
    if choice.chosen_by == "override":
        return f"the override is kept, but {finding}"
    raise NoPlausibleDirection(
        f"no direction makes plausible saliency masks: {finding}.\n"
        f"Scores and the contact sheet were written for a look. To try: the other discover.method, more "
        f"steps, a larger discover.magnitude, or discover.override {{index, sign}} for a direction the "
        f"contact sheet shows to work.")
