# Sourced by scripts/try-onion.sh and scripts/bench-onion.sh: the issue's
# onion topology as network namespaces on one bridge, each machine in its
# own /16 (path rules never put two hops in one /16):
#
#   a1 a2 a3      directory authorities   10.1.0.1  10.2.0.1  10.3.0.1
#   n1 .. n7      nodes (n5-n7 exits)     10.11.0.1 .. 10.17.0.1
#   client        the user                10.50.0.1
#   web           an HTTP server          10.60.0.1
#
# onion_net_up PREFIX WORK makes namespaces PREFIX<machine> (and PREFIXhub
# with the bridge) and a folder WORK/<machine> for each; onion_net_down
# PREFIX removes them. Nothing is routed outside the bridge.

ONION_MACHINES="a1 a2 a3 n1 n2 n3 n4 n5 n6 n7 client web"

addr_of() {
    case $1 in
        a*) echo "10.${1#a}.0.1" ;;
        n*) echo "10.1${1#n}.0.1" ;;
        client) echo "10.50.0.1" ;;
        web) echo "10.60.0.1" ;;
    esac
}

onion_net_up() {
    local p=$1 work=$2 m
    ip netns add "${p}hub"
    ip -n "${p}hub" link add br0 type bridge
    ip -n "${p}hub" link set br0 up
    for m in $ONION_MACHINES; do
        ip netns add "$p$m"
        ip -n "$p$m" link set lo up
        ip link add "$p$m" netns "$p$m" type veth peer name "v$m" netns "${p}hub"
        ip -n "$p$m" link set "$p$m" name eth0
        ip -n "$p$m" addr add "$(addr_of "$m")/8" dev eth0
        ip -n "$p$m" link set eth0 up
        ip -n "${p}hub" link set "v$m" master br0 up
        mkdir -p "$work/$m"
    done
}

onion_net_down() {
    local p=$1 m
    for m in $ONION_MACHINES hub; do ip netns del "$p$m" 2>/dev/null || true; done
}
