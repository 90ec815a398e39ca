"""The doctor's vocabulary: one check's verdict, and the seed blog's checklist it maps onto."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Result = Literal["pass", "warn", "fail"]

# The seed blog's "the loss does not go down" checklist, in its order (0: not in the blog).
BLOG_ITEMS = {
    0: "data and labels (not in the blog's list)",
    1: "1. the loop calls zero_grad(), backward(), step() in that order",
    2: "2. the optimizer is built after the model",
    3: "3. the optimizer was given model.parameters()",
    4: "4. inputs are scaled sensibly (e.g. to [0, 1])",
    5: "5. the learning rate lies between 0.1 and 0.001 (for this model: the range below)",
}

SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


class Check(BaseModel):
    name: str
    result: Result
    message: str  # the evidence, with numbers
    fix: str = ""  # what to do about it; empty when the check passed
    blog_items: list[int] = []
    evidence: dict[str, Any] = {}


def worst(checks: list[Check]) -> Result:
    return max((c.result for c in checks), key=SEVERITY.__getitem__, default="pass")
