#!/usr/bin/env python3
"""Copies config/default.toml into the README's configuration reference (the first toml block)."""
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
readme = (root / "README.md").read_text()
default = (root / "config" / "default.toml").read_text()
start = readme.index("```toml\n") + len("```toml\n")
end = readme.index("```", start)
(root / "README.md").write_text(readme[:start] + default + readme[end:])
