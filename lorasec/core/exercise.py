"""Checking a student's answer to a notebook exercise: numbers within a tolerance, words up to case."""

from __future__ import annotations

import numpy as np


def check_answer(name: str, answer, expected, *, rtol: float = 0.02, atol: float = 0.0, hint: str = "") -> bool:
    """False (and a reminder) while ``answer`` is None; True if it matches ``expected``; otherwise AssertionError.

    Strings compare case- and space-insensitively; numbers and arrays with ``numpy.allclose(rtol, atol)``.

    Args:
        name: the exercise's name, for the messages.
        answer: the student's value (a string, a number or an array-like), or None while unanswered.
        expected: the reference: a string, or a number or array-like (the answer needs the same shape).
        rtol: relative tolerance for numbers.
        atol: absolute tolerance for numbers.
        hint: added to the AssertionError's message.
    Returns:
        True when ``answer`` matches (and "correct" is printed), False while it is None.
    """
    if answer is None:
        print(f"{name}: not answered yet (replace None in the cell above)")
        return False
    if isinstance(expected, str):
        ok = isinstance(answer, str) and answer.strip().lower() == expected.strip().lower()
    else:
        try:
            got = np.asarray(answer, dtype=float)
        except (TypeError, ValueError):
            raise AssertionError(f"{name}: expected a number, got {answer!r}") from None
        want = np.asarray(expected, dtype=float)
        ok = got.shape == want.shape and bool(np.allclose(got, want, rtol=rtol, atol=atol))
    if not ok:
        raise AssertionError(f"{name}: {answer!r} is not it. {hint}".rstrip())
    print(f"{name}: correct")
    return True
