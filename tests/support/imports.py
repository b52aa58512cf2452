"""Python run as if some packages were not installed: a finder in front of sys.meta_path refuses them."""

from __future__ import annotations

import textwrap


def blocked_python(blocked: tuple[str, ...], code: str) -> str:
    """Python source that makes importing any of `blocked` fail, as on a machine without them, then
    runs `code`."""
    return textwrap.dedent(f"""
        import sys

        class BlockImports:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(f"{{name}} is blocked: not installed here")
                return None

        sys.meta_path.insert(0, BlockImports())
    """) + textwrap.dedent(code)
