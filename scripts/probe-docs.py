#!/usr/bin/env python3
"""Writes the probe set's source documents into a folder, one .txt file each (first line:
the title; blank lines separate paragraphs), from text every machine has offline:
Python's bundled documentation (pydoc_data.topics), the long docstrings of its standard
library modules, and Debian's license texts (/usr/share/common-licenses) where present.

Usage: scripts/probe-docs.py OUT_DIR
"""
import importlib
import os
import pkgutil
import re
import sys
import sysconfig
import warnings

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
docs = {}


def add(title, text):
    title = " ".join(title.split())[:80]
    base, k = title, 2
    while title in docs:
        title = f"{base} ({k})"
        k += 1
    docs[title] = text


import pydoc_data.topics as topics

for key in sorted(topics.topics):
    text = topics.topics[key]
    first, _, rest = text.strip().partition("\n")
    add("Python reference: " + first.strip(), rest)

warnings.simplefilter("ignore")
# Only the standard library, and none of the modules that act when imported.
sys.path = [p for p in sys.path if p and os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]
skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "pydoc_data"}
stdlib = sysconfig.get_paths()["stdlib"]
for m in sorted(pkgutil.iter_modules([stdlib]), key=lambda m: m.name):
    if m.name.startswith("_") or m.name in skip:
        continue
    try:
        mod = importlib.import_module(m.name)
    except Exception:
        continue
    doc = getattr(mod, "__doc__", None) or ""
    if len(doc) >= 1500:
        add(f"Python module {m.name}", doc)

lic = "/usr/share/common-licenses"
if os.path.isdir(lic):
    for name in sorted(os.listdir(lic)):
        p = os.path.join(lic, name)
        if os.path.isfile(p) and not os.path.islink(p):
            add(f"License text {name}", open(p, encoding="utf-8", errors="replace").read())

for i, (title, text) in enumerate(sorted(docs.items())):
    text = re.sub(r"\r\n?", "\n", text)
    with open(os.path.join(out, f"{i:04d}.txt"), "w", encoding="utf-8") as f:
        f.write(title + "\n\n" + text.strip() + "\n")
print(f"probe-docs: {len(docs)} documents in {out}", file=sys.stderr)
