"""Offline English sentences for calibrating and evaluating text models: Python's own docstrings.

No text data set is available offline, so the sentences come from the documentation strings in
the source files of a fixed, sorted list of pure-Python standard-library modules (MODULES).  The
files are parsed with ``ast``, not imported, so the text does not depend on what else a process
has imported (torch, for one, replaces some ``inspect`` functions at import time).  Per module, in
source order: the module's docstring, then each top-level class and function, and each method of
those classes.  Each docstring is split into paragraphs; paragraphs that hold code (indented
lines, ``>>>``) are skipped, the rest are split into sentences.  A sentence is kept if it has 5-60
words, starts with a capital letter, ends with ``.``, ``!`` or ``?``, is at least 75% letters
(spaces not counted), and has no markup or code characters (backquotes, ``*``, ``_``, brackets,
``=``, slashes, URLs, dotted names).  Duplicates are dropped (first occurrence kept).

The sentences are shuffled once with a fixed seed, then split by a CRC-32 of the sentence's text,
so "calib" and "eval" never share a sentence and a sentence's split does not depend on which other
sentences exist.  ``sentences(split, n)[:k] == sentences(split, k)``.  The lists depend only on the
Python version's standard library (3.11.7 gives 3742 sentences: 1876 calib, 1866 eval).

    python models/text_corpus.py            # counts per split and a few examples
"""
from __future__ import annotations

import ast
import functools
import os
import random
import re
import sysconfig
import zlib

SPLITS = ("calib", "eval")
SEED = 0
MODULES = tuple(sorted((
    "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.queues", "asyncio.streams", "asyncio.tasks", "asyncio.transports", "base64", "bdb",
    "bisect", "calendar", "cmd", "codecs", "collections", "concurrent.futures._base",
    "concurrent.futures.process", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "difflib", "doctest", "email.charset", "email.feedparser", "email.header",
    "email.message", "email.utils", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "io", "ipaddress", "json",
    "logging", "logging.handlers", "mailbox", "mimetypes", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.process", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "profile", "pstats", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "ssl", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
    "zoneinfo._zoneinfo",
)))
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"[`*_=()\[\]{}<>/\\|#@$%^~+]|\.\.|https?:|\w\.\w")


def _source_path(module: str) -> str:
    """The standard library's source file of `module` (a package's ``__init__.py``)."""
    base = os.path.join(sysconfig.get_paths()["stdlib"], *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no source file for standard-library module {module!r} under {base}")


def _docstrings(module: str):
    """The module's docstring, then those of its top-level classes and functions, in source order,
    each class followed by its methods'."""
    with open(_source_path(module), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    yield ast.get_docstring(tree)
    for node in tree.body:
        if isinstance(node, _DEFS):
            yield ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, _DEFS[1:]):
                        yield ast.get_docstring(member)


def _split_sentences(doc: str):
    for para in re.split(r"\n\s*\n", doc):
        if any(line.startswith((" ", ">>>", "...")) for line in para.splitlines()):
            continue  # code, doctest or an indented list
        yield from _SENTENCE_END.split(" ".join(para.split()))


def _is_english_sentence(s: str) -> bool:
    if not 5 <= len(s.split()) <= 60 or not s[0].isupper() or s[-1] not in ".!?" or _MARKUP.search(s):
        return False
    return sum(c.isalpha() for c in s) >= 0.75 * len(s.replace(" ", ""))


@functools.lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """Every kept sentence, deduplicated, in the seeded shuffled order."""
    seen: dict[str, None] = {}
    for module in MODULES:
        for doc in _docstrings(module):
            for s in _split_sentences(doc or ""):
                if _is_english_sentence(s):
                    seen.setdefault(s)
    out = list(seen)
    random.Random(SEED).shuffle(out)
    return tuple(out)


def split_of(sentence: str) -> str:
    """"calib" or "eval", by a CRC-32 of the sentence's UTF-8 text."""
    return SPLITS[zlib.crc32(sentence.encode()) & 1]


def sentences(split: str, n: int | None = None) -> list[str]:
    """The first `n` sentences of `split` ("calib" or "eval"); all of them when n is None."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = [s for s in all_sentences() if split_of(s) == split]
    if n is None:
        return pool
    if n > len(pool):
        raise ValueError(f"asked for {n} {split!r} sentences, only {len(pool)} exist")
    return pool[:n]


if __name__ == "__main__":
    for split in SPLITS:
        pool = sentences(split)
        print(f"{split}: {len(pool)} sentences")
        for s in pool[:3]:
            print("   ", s)
