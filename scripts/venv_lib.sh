# Shared by scripts/setup_vllm.sh and scripts/setup_nanogcg.sh: a virtual environment of its
# own for a component whose pins the project's environment does not share, made once.
#
#   venv_ready VENV STAMP   exit status 0 when VENV is complete for STAMP (what it was made with)
#   venv_fresh VENV NAME    a new empty venv at VENV (refusing a VENV that is something else)

venv_ready() {
    [[ -f "$1/.deepalign-ready" && "$(cat "$1/.deepalign-ready")" == "$2" ]]
}

venv_fresh() {
    if [[ -e "$1" && ! -f "$1/pyvenv.cfg" ]]; then
        echo "$2: $1 exists and is not a virtual environment; remove it or choose another place" >&2
        exit 2
    fi
    rm -rf "$1"  # an unfinished or older environment
    python3 -m venv "$1"
}
