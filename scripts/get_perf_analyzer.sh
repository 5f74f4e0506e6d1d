#!/usr/bin/env bash
# Fetch Triton's perf_analyzer without installing anything into the project's environment.
#
# tritonclient 2.49.0 is the newest wheel that still carries perf_analyzer built for glibc < 2.38;
# installing it would pin protobuf<5 and break onnx, so the wheel is only downloaded (--no-deps)
# and the binary extracted. Its two missing libraries (libb64, libcudart) come from the
# nvidia-pytriton wheel already in the venv, linked under their plain names.
#
# usage: scripts/get_perf_analyzer.sh [CACHE_DIR]
#   default: $GENDEPLOY_CACHE_DIR/perf_analyzer, else ${XDG_CACHE_HOME:-~/.cache}/gendeploy/perf_analyzer
# prints the path of a wrapper that runs perf_analyzer with the right LD_LIBRARY_PATH.
set -euo pipefail

VENV="${VENV:-.venv}"
CACHE="${1:-${GENDEPLOY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gendeploy}/perf_analyzer}"
WRAPPER="$CACHE/perf_analyzer"
if [[ -x "$WRAPPER" ]] && "$WRAPPER" --version >/dev/null 2>&1; then
    echo "$WRAPPER"
    exit 0
fi

mkdir -p "$CACHE/wheel" "$CACHE/bin" "$CACHE/lib"
"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --python-version 3.11 \
    -d "$CACHE/wheel" "tritonclient==2.49.0" >&2
WHEEL="$(ls "$CACHE"/wheel/tritonclient-2.49.0-*.whl | head -n 1)"

"$VENV/bin/python" - "$WHEEL" "$CACHE/bin/perf_analyzer" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("tritonclient-2.49.0.data/data/bin/perf_analyzer")
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
EOF

LIBS="$("$VENV/bin/python" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")')"
ln -sf "$(ls "$LIBS"/libb64-*.so.0d | head -n 1)" "$CACHE/lib/libb64.so.0d"
ln -sf "$(ls "$LIBS"/libcudart-*.so.12* | head -n 1)" "$CACHE/lib/libcudart.so.12"

cat > "$WRAPPER.tmp" <<EOF
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$CACHE/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$CACHE/bin/perf_analyzer" "\$@"
EOF
chmod +x "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
"$WRAPPER" --version >/dev/null 2>&1 || { echo "perf_analyzer does not run: see $WRAPPER" >&2; exit 1; }
echo "$WRAPPER"
