"""Fail when the docs name a repository path that does not exist (a stale reference).

Called by ``make docs`` (after the strict mkdocs build) and by ``tests/test_docs_site.py``, so
``make test`` fails on a stale reference too. mkdocs checks the links between pages of the site;
this checks what it cannot: the repository paths the prose names (in inline code such as
`` `tests/chaos/history.py` ``, in fenced command lines, in plain text) and the tests it names
(`` test_fencing_failover.py ``, a test function ``test_a_stalled_renewal_...``, or a prefix of
test names ending in "_"), and the relative links of the README and the chart's README (outside
the site), in docs/*.md, the README and the chart's README. In a fenced package tree (a line
``worker_runtime/   ...`` followed by entries indented two spaces, ``  keys.py   THE key
schema``), every entry must exist under its folder and every module and sub-package of the
folder must be listed. A ``make TARGET`` in inline code or a fenced block must name a target of
the Makefile. The comments and docstrings of the repository's Python files are held to the
first rule too (:func:`find_stale_code_references`): a path they name must exist.

A word counts as a repository path when its first segment is a top-level folder of the
repository (not a build output such as dist/) and it names a file (it has a suffix such as
.py/.yaml, or is a Dockerfile/Makefile) or a folder (it ends with "/"). Placeholders (<name>,
*, ...) are not paths. External http(s) links are never fetched.
Usage: ``python scripts/check_doc_paths.py [REPO]``; exit 1 lists each stale reference as
``file:line: path``.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
from pathlib import Path

# Folders made by builds and tools: a path under them is an output, not a source file.
BUILD_OUTPUTS = frozenset({"dist", "site", "build", "demo-out", ".venv", ".git", ".ci"})
PLACEHOLDER = re.compile(r"[<>*\[\]{}$]|\.\.\.")
TEST_NAME = re.compile(r"(?<![\w/.-])(test_[a-z0-9_]+)(\.py)?\b")
TEST_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(test_\w+)", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`([^`]+)`")
MAKE_COMMAND = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][a-z0-9-]*)")
MAKE_TARGET = re.compile(r"^([a-z][a-z0-9-]*)\s*:(?!=)", re.MULTILINE)
TREE_ROOT = re.compile(r"^([\w.-]+/(?:[\w.-]+/)*)(?:\s|$)")
TREE_ENTRY = re.compile(r"^  (\S.*?)(?:\s{2,}|$)")
FILE_NAMES_WITHOUT_SUFFIX = frozenset({"Dockerfile", "Makefile"})
# Python sources whose comments and docstrings are checked: the repository's own code.
CODE_ROOTS = ("worker_runtime", "operator", "tests", "bench", "scripts", "examples")
NOT_CODE = frozenset({"node_modules", ".venv", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class StaleReference:
    doc: Path
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.path}"


def docs_to_check(repo: Path) -> list[Path]:
    """The newcomer-facing pages: every docs/*.md, the README and the chart's README."""
    pages = sorted((repo / "docs").glob("*.md"))
    pages += [p for p in (repo / "README.md", repo / "charts/workerfleet/README.md") if p.exists()]
    return pages


def looks_like_repo_path(word: str, top_dirs: frozenset[str]) -> bool:
    if PLACEHOLDER.search(word) or "://" in word:
        return False
    first, sep, rest = word.partition("/")
    if not sep or first not in top_dirs or not rest:
        return False
    name = word.rstrip("/").rsplit("/", 1)[-1]
    return word.endswith("/") or "." in name or name in FILE_NAMES_WITHOUT_SUFFIX


def words_of(text: str) -> list[str]:
    # Backticks and trailing punctuation belong to the markdown or the sentence, not the path.
    # A possessive ("tests/conftest.py's RedisServer") names the path before it.
    return [w.strip("`.,;:()'\"|").removesuffix("'s") for w in text.split()]


@dataclasses.dataclass(frozen=True)
class KnownTests:
    modules: frozenset[str]
    functions: frozenset[str]

    def names(self, name: str, is_file: bool) -> bool:
        if is_file:
            return name in self.modules
        if name.endswith("_"):  # a family of tests named by their common prefix
            return any(f.startswith(name) for f in self.functions)
        return name in self.modules or name in self.functions


def collect_tests(repo: Path) -> KnownTests:
    files = sorted((repo / "tests").rglob("test_*.py")) if (repo / "tests").is_dir() else []
    functions = {m for f in files for m in TEST_DEF.findall(f.read_text())}
    return KnownTests(frozenset(f.stem for f in files), frozenset(functions))


def tree_entries(
    line: str, root: str | None, top_dirs: frozenset[str]
) -> tuple[str | None, list[str]]:
    """(the package-tree folder after `line`, the repository paths `line` lists under it)."""
    header = TREE_ROOT.match(line)
    if header and header.group(1).split("/", 1)[0] in top_dirs:
        return header.group(1), []
    entry = TREE_ENTRY.match(line)
    if root is None or entry is None:
        return (None if line and not line.startswith(" ") else root), []
    names = [n for n in re.split(r"[\s,]+", entry.group(1)) if n]
    return root, [root + n for n in names if re.fullmatch(r"[\w./*-]+", n)]


def modules_of(folder: Path) -> set[str]:
    """What a package tree of `folder` must list: its modules and sub-packages (not __init__)."""
    names = {p.name for p in folder.glob("*.py") if not p.name.startswith("__init__")}
    names |= {p.name + "/" for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"}
    return names


def check_package_trees(repo: Path, doc: Path, top_dirs: frozenset[str]) -> list[StaleReference]:
    """Each entry of a fenced package tree exists, and each module of its folder is listed."""
    stale: list[StaleReference] = []
    trees: dict[tuple[int, str], set[str]] = {}  # (line of the tree's header, folder) -> listed
    in_fence, root, header_line = False, None, 0
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if FENCE.match(line):
            in_fence, root = not in_fence, None
            continue
        if not in_fence:
            continue
        new_root, listed = tree_entries(line, root, top_dirs)
        if new_root is not None and new_root != root and not listed:
            header_line = number
            trees[(header_line, new_root)] = set()
        root = new_root
        for path in listed:
            if not exists(repo, path):
                stale.append(StaleReference(doc.relative_to(repo), number, path))
            elif root is not None:
                first = path[len(root) :].split("/", 1)
                trees[(header_line, root)].add(first[0] + ("/" if len(first) > 1 else ""))
    for (number, folder), entries in trees.items():
        if (repo / folder).is_dir():
            for name in sorted(modules_of(repo / folder) - entries):
                missing = f"{folder}{name} (not in the package tree)"
                stale.append(StaleReference(doc.relative_to(repo), number, missing))
    return stale


def collect_make_targets(repo: Path) -> frozenset[str]:
    makefile = repo / "Makefile"
    return (
        frozenset(MAKE_TARGET.findall(makefile.read_text())) if makefile.exists() else frozenset()
    )


def exists(repo: Path, path: str) -> bool:
    if "*" in path:
        return any(repo.glob(path))
    return (repo / path).exists()


def find_stale_references(repo: Path) -> list[StaleReference]:
    """Every repository path named in the docs that does not exist under `repo`."""
    top_dirs = frozenset(
        p.name for p in repo.iterdir() if p.is_dir() and p.name not in BUILD_OUTPUTS
    )
    tests = collect_tests(repo)
    targets = collect_make_targets(repo)
    stale: list[StaleReference] = []
    for doc in docs_to_check(repo):
        stale += sorted(check_lines(repo, doc, top_dirs, tests, targets), key=lambda r: r.line)
    return stale


def check_lines(
    repo: Path, doc: Path, top_dirs: frozenset[str], tests: KnownTests, targets: frozenset[str]
) -> list[StaleReference]:
    """The stale references of one page: its package trees, then line by line."""
    stale = check_package_trees(repo, doc, top_dirs)
    page, in_fence = doc.relative_to(repo), False
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        # In a fenced block only the command counts, not its comment ("# ... make the pool").
        code = [line.split("#", 1)[0]] if in_fence else CODE_SPAN.findall(line)
        for target in (t for c in code for t in MAKE_COMMAND.findall(c)):
            if target not in targets:
                stale.append(StaleReference(page, number, f"make {target}"))
        for word in words_of(line):
            if looks_like_repo_path(word, top_dirs) and not (repo / word).exists():
                stale.append(StaleReference(page, number, word))
        # A sample's own test (``def test_...`` in a fenced block) is defined there, not named.
        defined = in_fence and TEST_DEF.match(line) is not None
        for name, suffix in [] if defined else TEST_NAME.findall(line):
            if not tests.names(name, is_file=bool(suffix)):
                stale.append(StaleReference(page, number, name + suffix))
        for link in LINK.findall(line) if not in_fence else []:
            link = link.split("#", 1)[0]
            if not link or re.match(r"^[a-z][a-z0-9+.-]*:", link):
                continue  # an anchor on the same page, or an external/mailto link
            if not (doc.parent / link).exists():
                stale.append(StaleReference(page, number, link))
    return stale


def prose_of_python(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python source: where prose lives."""
    out: list[tuple[int, str]] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                doc = body[0].value.value
                if isinstance(doc, str):
                    out += [(body[0].lineno + i, line) for i, line in enumerate(doc.splitlines())]
    return out


def find_stale_code_references(repo: Path) -> list[StaleReference]:
    """Every repository path named in a comment or docstring of the code that does not exist."""
    top_dirs = frozenset(
        p.name for p in repo.iterdir() if p.is_dir() and p.name not in BUILD_OUTPUTS
    )
    stale: list[StaleReference] = []
    for root in CODE_ROOTS:
        for source in sorted((repo / root).rglob("*.py")) if (repo / root).is_dir() else []:
            if NOT_CODE & set(source.relative_to(repo).parts):
                continue
            for number, text in prose_of_python(source.read_text()):
                for word in words_of(text):
                    if looks_like_repo_path(word, top_dirs) and not exists(repo, word):
                        stale.append(StaleReference(source.relative_to(repo), number, word))
    return stale


def main(argv: list[str]) -> int:
    repo = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    stale = find_stale_references(repo) + find_stale_code_references(repo)
    for ref in stale:
        print(f"stale reference: {ref}", file=sys.stderr)
    if stale:
        print(f"{len(stale)} stale reference(s) in the docs and code", file=sys.stderr)
        return 1
    print(f"doc paths: {len(docs_to_check(repo))} pages checked, no stale reference")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
