"""What leaves this machine: secrets and local paths are scrubbed from what is shared, and a
text about to be published is refused if one is left.

Used by everything that sends something elsewhere: the `report_to` loggers (the tracker's records
and the diagnosis), the HTML page, the model card and the Hub push. `hf_ilp.diagnosis.privacy`
adds `publishable(report)`, a report with its summary scrubbed.

- `scrub(value)`: secret-named keys dropped, Hub tokens redacted, local paths cut to their last part;
- `assert_no_secrets(text, what)`: a ValueError naming `what` if `text` holds a Hub token, the home
  or working folder, or any of `extra`;
- `redacted(texts, what)`: the texts as they may leave, each one that fails `assert_no_secrets`
  replaced by `<redacted>`.
"""

import math
import os
import re
from pathlib import Path

REDACTED = "<redacted>"
TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_SECRET_KEY_RE = re.compile(r"(^|[_-])(token|secret|password|passwd|api[_-]?key|credentials?)$", re.I)


def scrub(value):
    """Drop secret-named keys, redact tokens, and reduce local paths to their last component."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not _SECRET_KEY_RE.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, str):
        value = TOKEN_RE.sub(REDACTED, value)
        if looks_like_path(value):
            return Path(value.rstrip("/\\")).name or "<path>"
        return value
    return value


def looks_like_path(value: str) -> bool:
    """Whether `value` reads like a local file path (absolute, home-relative or ./../-relative, no spaces)."""
    return bool(re.match(r"^(~|/|[A-Za-z]:[\\/]|\.{1,2}/)", value)) and " " not in value.strip()


def _local_secrets(extra=()) -> list[str]:
    """Strings that must never leave this machine: the Hub token, the home and working folders."""
    from huggingface_hub import get_token

    candidates = [get_token() or "", str(Path.home()), os.getcwd(), *map(str, extra)]
    return [s for s in candidates if len(s) > 1]


def assert_no_secrets(text: str, what: str, extra=()) -> None:
    """Raise if `text` (about to be published) contains a token or a path of this machine."""
    if TOKEN_RE.search(text):
        raise ValueError(f"{what} contains something that looks like a Hub token; refusing to publish it")
    for secret in _local_secrets(extra):
        if secret in text:
            raise ValueError(f"{what} contains a path or secret of this machine ({'a token' if secret.startswith('hf_') else 'a local path'}); refusing to publish it")


def finite(x):
    """`x` as a float, None for None, NaN or infinity (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def redacted(texts: list, what: str) -> list:
    """`texts` as they may leave this machine: each one holding a Hub token or a local path becomes `<redacted>`."""
    try:
        assert_no_secrets("\n".join(texts), what)
        return list(texts)
    except ValueError:
        pass
    out = []
    for text in texts:
        try:
            assert_no_secrets(text, what)
            out.append(text)
        except ValueError:
            out.append(REDACTED)
    return out
