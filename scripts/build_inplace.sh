# Sourced by the scripts that build the extension in a scratch copy of the
# tree. build_inplace PYTHON DIR [VAR=value...] builds it in DIR/cluster_ext with the
# setuptools that pyproject.toml asks for: an interpreter's own is often older
# (a 3.11 venv carries 65, Debian's python3 66) and cannot read its license.
build_inplace() {
    local py=$1 dir=$2
    shift 2
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        --target "$dir/.build-tools" 'setuptools>=77' > /dev/null
    (cd "$dir" && env PYTHONPATH="$dir/.build-tools" "$@" "$py" setup.py -q build_ext --inplace > /dev/null)
}
