# Sourced by the bench scripts before they enter their private network
# namespace (where no registry can be reached): installs what the benches
# compare against, if it is missing, as a new user's machine needs it.
#   need_commands CMD:DEBIAN_PACKAGE ...   apt-get install what is missing
#   need_wormhole                          magic-wormhole, its mailbox server and
#                                          transit relay in a venv under target/
need_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing for the benchmark: ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_wormhole() {
    local venv="$ROOT/target/bench-venv"
    if [ ! -x "$venv/bin/wormhole" ] || [ ! -x "$venv/bin/twist" ]; then
        echo "installing magic-wormhole (PyPI) into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q magic-wormhole magic-wormhole-mailbox-server magic-wormhole-transit-relay
    fi
    export PATH="$venv/bin:$PATH"
}
