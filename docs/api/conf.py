"""Sphinx settings for the API reference (`make docs`): built offline from the docstrings."""

from __future__ import annotations

import pyfabric

project = "pyfabric"
release = version = pyfabric.__version__
extensions = ["sphinx.ext.autodoc"]
autodoc_default_options = {"members": True, "imported-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Docstrings use `single backticks` for names, as the code base does.
default_role = "code"
nitpicky = False
html_theme = "alabaster"
html_static_path: list[str] = []
exclude_patterns = ["_build"]
