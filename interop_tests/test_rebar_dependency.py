"""erlang_peer as a dependency: the rebar3 line of erlang_peer/README.md works as written.

A throwaway rebar3 project in a temporary directory depends on this repository with the
README's ``{git_subdir, ...}`` line (its ``URL`` replaced by this checkout, its branch by the
commit checked out here: uncommitted changes are not part of what is tested), compiles it with
the rebar3 on the PATH (Debian's 3.19 in CI) and starts it in a real ``erl``: the application
starts, serves a connection and stops, and it was built with the application's own compiler
options (no ``warnings_as_errors`` forced on the user).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "erlang_peer" / "README.md"


def _readme_dep_line() -> str:
    lines = [line for line in README.read_text().splitlines() if "git_subdir" in line and line.startswith("{deps")]
    assert len(lines) == 1, "erlang_peer/README.md should show exactly one {deps, [...git_subdir...]} line"
    return lines[0]


def test_readme_dependency_line_names_the_app_folder() -> None:
    line = _readme_dep_line()
    subdir = re.search(r'"(erlang_peer/[^"]+)"\}\}\]\}\.$', line)
    assert subdir is not None, line
    assert (ROOT / subdir.group(1) / "src" / "fabric_peer.app.src").is_file()


def test_a_rebar3_project_depending_on_it_compiles_and_starts_it(tmp_path: Path) -> None:
    rebar3, erl = shutil.which("rebar3"), shutil.which("erl")
    assert rebar3 and erl, "rebar3 and erl are needed: run `make setup`"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    line = _readme_dep_line().replace('"URL"', f'"file://{ROOT}"')
    line, n = re.subn(r'\{branch, "[^"]+"\}', f'{{ref, "{head}"}}', line)
    assert n == 1, line
    project = tmp_path / "depcheck"
    (project / "src").mkdir(parents=True)
    (project / "rebar.config").write_text(line + "\n")
    (project / "src" / "depcheck.app.src").write_text(
        '{application, depcheck, [{description, "uses fabric_peer"}, {vsn, "0.0.1"}, '
        "{applications, [kernel, stdlib, fabric_peer]}]}.\n"
    )
    built = subprocess.run([rebar3, "compile"], cwd=project, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    apps = sorted((project / "_build" / "default" / "lib").glob("**/ebin/*.app"))
    assert {p.stem for p in apps} >= {"depcheck", "fabric_peer"}, apps
    path_args = [arg for app in apps for arg in ("-pa", str(app.parent))]
    script = (
        "{ok, Started} = application:ensure_all_started(depcheck), "
        "true = lists:member(fabric_peer, Started), "
        '{ok, S} = fabric_peer:start_server(0, "dep secret", #{allowed => []}), '
        "P = fabric_peer:port(S), true = is_integer(P) andalso P > 0, "
        '{ok, C} = fabric_peer:connect("127.0.0.1", P, "dep secret", #{}), '
        "ok = fabric_peer:close(C), ok = fabric_peer:stop_server(S), "
        "Opts = proplists:get_value(options, fabric_peer:module_info(compile)), "
        'io:format("started ~p~n", [lists:member(warnings_as_errors, Opts)]), halt().'
    )
    ran = subprocess.run([erl, "-noshell", *path_args, "-eval", script], capture_output=True, text=True, timeout=120)
    assert ran.stdout.strip().splitlines()[-1:] == ["started false"], ran.stdout + ran.stderr
