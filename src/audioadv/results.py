"""Result records as strict JSON.

Python's json writes float('inf') and float('nan') as Infinity / NaN, which are not JSON: jq, browsers and most other
readers refuse the file. Results have such values where a quantity does not exist (the SNR of an unchanged clip, the
mean over no finite values), so every writer of result records goes through :func:`dumps`, which writes them as null.
"""
from __future__ import annotations

import json
import math


def json_safe(obj):
    """obj with every non-finite float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(x) for k, x in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(x) for x in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps of :func:`json_safe` (obj); never writes Infinity or NaN."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
