#!/usr/bin/env bash
# Fetches the headers the `cudnn` feature builds against, from PyPI (no CUDA or cuDNN
# install needed on the build machine): cudnn-frontend's header-only graph API and cuDNN's
# own headers. Prints the two variables to export:
#
#   eval "$(bash scripts/cudnn/headers.sh)"
#   cargo build --release --features cudnn        # or --features flash-attn,cudnn
#
# At run time gateau loads libcudnn.so.9 from the library path (a CUDA install's cuDNN, or
# a PyTorch environment's nvidia/cudnn/lib), or the file named by $GATEAU_CUDNN_LIB.
set -euo pipefail
FRONTEND_VERSION=${CUDNN_FRONTEND_VERSION:-1.32.0}
CUDNN_WHEEL=${CUDNN_WHEEL:-nvidia-cudnn-cu13==9.28.1.4}
dir=${GATEAU_CUDNN_HEADERS:-$HOME/.cache/gateau/cudnn-headers}
# cudnn_frontend.h includes "../include/...": the folder keeps its name.
if [ ! -f "$dir/.done-$FRONTEND_VERSION" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" \
    "nvidia-cudnn-frontend==$FRONTEND_VERSION" "$CUDNN_WHEEL" >&2
  mkdir -p "$dir/frontend" "$dir/cudnn"
  python3 - "$tmp" "$dir" <<'PY'
import pathlib, sys, zipfile
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in tmp.glob("*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.startswith("include/") and not name.endswith("/"):
                dest = out / "frontend" / name
            elif name.startswith("nvidia/cudnn/include/") and not name.endswith("/"):
                dest = out / "cudnn" / name[len("nvidia/cudnn/include/"):]
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
PY
  test -f "$dir/frontend/include/cudnn_frontend.h" && test -f "$dir/cudnn/cudnn.h"
  touch "$dir/.done-$FRONTEND_VERSION"
fi
echo "export CUDNN_FRONTEND_INCLUDE=$dir/frontend/include"
echo "export CUDNN_INCLUDE=$dir/cudnn"
