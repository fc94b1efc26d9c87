"""Rewrite chapters' {glue:text} roles as {eval}`text("key", "fmt")` (mvssl_core.booktext): the roles, the glue import
and the front matter (myst-nb inline mode + eval_name_regex). Usage: python scripts/glue_to_eval.py book/x.md [--write]
Without --write it only counts. Converted so far: book/pitfall.md (issue 14, item 2)."""
import re, sys
from pathlib import Path
sys.path.insert(0, ".")
from mvssl_core.booktext import EVAL_NAME_REGEX

ROLE = re.compile(r"\{glue:text\}`([^`]+)`")

def convert(src: str) -> tuple[str, int]:
    def role(m):
        key, sep, fmt = m.group(1).rpartition(":") if ":" in m.group(1) else (m.group(1), "", "")
        if not re.fullmatch(r"[A-Za-z0-9_]+", key) or '"' in fmt:
            raise ValueError(f"cannot convert {m.group(0)}")
        return f'{{eval}}`text("{key}", "{fmt}")`' if sep else f'{{eval}}`text("{key}")`'
    out, n = ROLE.subn(role, src)
    if "from myst_nb import glue\n" not in out:
        raise ValueError("no `from myst_nb import glue` line")
    out = out.replace("from myst_nb import glue\n", "from mvssl_core.booktext import glue, text\n", 1)
    head, sep, body = out[4:].partition("\n---\n")
    regex = EVAL_NAME_REGEX.replace("'", "''")
    out = "---\n" + head + f"\nmystnb:\n  execution_mode: inline\n  eval_name_regex: '{regex}'" + sep + body
    return out, n

if __name__ == "__main__":
    for p in sys.argv[1:]:
        new, n = convert(Path(p).read_text(encoding="utf-8"))
        print(p, n, "roles")
        if "--write" in sys.argv: Path(p).write_text(new, encoding="utf-8")
