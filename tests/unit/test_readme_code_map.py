"""README's map of the code ("## The code") names every module at the top of app/ and every
package in it, so the map a newcomer reads cannot fall behind the tree unnoticed."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def code_map() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## The code\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_code_map_names_every_module_and_package_of_app() -> None:
    app = ROOT / "app"
    names = {p.name for p in app.glob("*.py") if not p.name.startswith("__")}
    names |= {f"{p.name}/" for p in app.iterdir() if (p / "__init__.py").is_file()}
    listed = set(re.findall(r"[a-z_]+(?:\.py|/)", code_map()))
    assert names - listed == set(), "README's code map lacks these; describe them there"
