"""Test-only reward functions for the GRPO tests (importable as `rl_support.NAME`)."""


def digit_count(problem, text):
    """A reward with spread even for an untrained model: how many digits the completion wrote (capped)."""
    return float(min(sum(ch.isdigit() for ch in text), 4))


def constant(problem, text):
    """Every completion equal: every group has zero variance."""
    return 1.0


def not_a_number(problem, text):
    return "yes"


def ascii_fraction(problem, text):
    """Share of the completion's characters that are ASCII: about half for a random byte-level model,
    so every group has a spread and the policy gradient has a clear direction."""
    return sum(ord(ch) < 128 for ch in text) / max(1, len(text))
