# Run by `cargo xtask bench` inside the Debian 6.1 guest (`cargo xtask vm`): fault's EDT delay
# side by side with tc-netem on the same veth. Prints Markdown. Needs FAULT_BIN, FAULT_PROBE.
set -eu
F=$FAULT_BIN
P=$FAULT_PROBE
CG=/sys/fs/cgroup/fault-bench
cleanup() {
    $F stop --all >/dev/null 2>&1 || true
    [ -n "${ECHO:-}" ] && kill "$ECHO" 2>/dev/null || true
    [ -n "${ANCHOR:-}" ] && kill "$ANCHOR" 2>/dev/null || true
    ip netns del fb-a 2>/dev/null || true
    ip netns del fb-b 2>/dev/null || true
    sleep 0.2
    rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add fb-a
ip netns add fb-b
ip link add va netns fb-a type veth peer name vb netns fb-b
ip -n fb-a addr add 10.91.0.1/24 dev va
ip -n fb-b addr add 10.91.0.2/24 dev vb
for n in fb-a fb-b; do ip -n $n link set lo up; done
ip -n fb-a link set va up
ip -n fb-b link set vb up
mkdir -p $CG
sh -c "echo \$\$ > $CG/cgroup.procs; exec nsenter --net=/run/netns/fb-a sleep 3600" &
ANCHOR=$!
nsenter --net=/run/netns/fb-b $P echo --bind 0.0.0.0:9000 &
ECHO=$!
sleep 0.5

# ping COUNT [in-cgroup]: prints "p50_us p99_us"
ping_rtt() {
    if [ "${2:-}" = cg ]; then
        out=$(sh -c "echo \$\$ > $CG/cgroup.procs; exec nsenter --net=/run/netns/fb-a $P ping --to 10.91.0.2:9000 --count $1 --interval-us 2000")
    else
        out=$(nsenter --net=/run/netns/fb-a $P ping --to 10.91.0.2:9000 --count $1 --interval-us 2000)
    fi
    p50=$(echo "$out" | grep -o '"p50_us":[0-9.]*' | cut -d: -f2)
    p99=$(echo "$out" | grep -o '"p99_us":[0-9.]*' | cut -d: -f2)
    echo "$p50 $p99"
}

# apply POLICY-FILE: starts fault in the background and waits until it is attached
apply() {
    $F apply --interval 1h "$1" >/tmp/fault-bench-apply.log 2>&1 &
    APPLY=$!
    i=0
    until grep -q '"ready": true' /run/fault/bench.json 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 600 ] && { cat /tmp/fault-bench-apply.log; exit 1; }
        sleep 0.05
    done
}
unapply() {
    kill "$APPLY"
    wait "$APPLY" || true
}

policy() { # RULES-YAML > /tmp/fault-bench.yaml
    printf 'apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: bench}\nspec:\n  duration: 10m\n  targets: [{cgroup: fault-bench}]\n  network:\n%s\n' "$1" >/tmp/fault-bench.yaml
}

set -- $(ping_rtt 200 cg)
BASE=$1
echo "Base round trip, no fault: p50 $(awk "BEGIN{printf \"%.3f\", $BASE/1000}") ms."
echo
echo "### Added delay: error of the median and of the 99th percentile"
echo
echo "| delay | samples | fault p50 error | fault p99 error | netem p50 error | netem p99 error |"
echo "|---:|---:|---:|---:|---:|---:|"
for d in 1 10 100; do
    n=300
    [ $d = 100 ] && n=100
    policy "    - {direction: egress, match: {protocol: udp}, delay: {latency: ${d}ms}}"
    apply /tmp/fault-bench.yaml
    set -- $(ping_rtt $n cg)
    o50=$1 o99=$2
    unapply
    ip netns exec fb-a tc qdisc add dev va root netem delay ${d}ms
    set -- $(ping_rtt $n cg)
    n50=$1 n99=$2
    ip netns exec fb-a tc qdisc del dev va root
    awk -v d=$d -v n=$n -v b=$BASE -v o50=$o50 -v o99=$o99 -v n50=$n50 -v n99=$n99 'BEGIN {
        us = d * 1000;
        printf "| %d ms | %d | %+.1f %% | %+.1f %% | %+.1f %% | %+.1f %% |\n", d, n,
            (o50 - b - us) / us * 100, (o99 - b - us) / us * 100,
            (n50 - b - us) / us * 100, (n99 - b - us) / us * 100 }'
done
echo
echo "Errors are (measured round trip - base median - delay) / delay; under qemu's emulation"
echo "timer wake-ups add about a millisecond to both."

echo
echo "### One TCP flow under 100 ms delay (20 MB)"
echo
tcp_mbit() {
    nsenter --net=/run/netns/fb-b $P tcp-recv --bind 0.0.0.0:9100 >/tmp/fault-bench-rx.json &
    rx=$!
    sleep 0.3
    sh -c "echo \$\$ > $CG/cgroup.procs; exec nsenter --net=/run/netns/fb-a $P tcp-send --to 10.91.0.2:9100 --bytes 20000000" >/dev/null
    wait $rx
    ms=$(grep -o '"elapsed_ms":[0-9.]*' /tmp/fault-bench-rx.json | cut -d: -f2)
    awk -v ms=$ms 'BEGIN { printf "%.1f", 20000000 * 8 / (ms / 1000) / 1e6 }'
}
policy "    - {direction: egress, match: {protocol: tcp}, delay: {latency: 100ms}}"
apply /tmp/fault-bench.yaml
ours=$(tcp_mbit)
unapply
ip netns exec fb-a tc qdisc add dev va root netem delay 100ms
netem=$(tcp_mbit)
ip netns exec fb-a tc qdisc del dev va root
echo "| | fault (EDT + fq) | netem (default limit 1000) |"
echo "|---|---:|---:|"
echo "| goodput | $ours Mbit/s | $netem Mbit/s |"
echo
echo "Until fault let a clone of the delayed packet wait in fq and freed the original, TCP Small"
echo "Queues held fault's flow here to about 0.5 Mbit/s."

# The cost for untargeted traffic: the same ping from outside the target cgroup, with no fault,
# with fault and 1 or 10,000 delay rules, and with netem behind 30,000 u32 filters (the text
# printed after the tables says how). The columns take turns within each round, so that a slow
# spell of the emulator does not fall on one column only.
policy "    - {direction: egress, match: {protocol: udp, cidrs: [10.0.0.0/24], ports: [1000]}, delay: {latency: 10ms}}"
mv /tmp/fault-bench.yaml /tmp/fault-bench-1.yaml
policy "$(awk 'BEGIN { for (i = 0; i < 10000; i++) printf "    - {direction: egress, match: {protocol: udp, cidrs: [10.%d.%d.0/24], ports: [%d]}, delay: {latency: 10ms}}\n", int(i / 256) % 256, i % 256, 1000 + i }')"
mv /tmp/fault-bench.yaml /tmp/fault-bench-10k.yaml
awk 'BEGIN { for (i = 0; i < 30000; i++) printf "filter add dev va parent 1: protocol ip prio %d u32 match ip dst 10.100.%d.%d/32 flowid 1:3\n", 1 + int(i / 4000), int(i / 256), i % 256 }' >/tmp/fault-bench-u32.batch
ping_rtt 100 >/dev/null # warm-up after the bulk transfers
none='' one='' many='' bare='' full=''
for _ in 1 2 3; do
    set -- $(ping_rtt 300)
    none="$none $1"
    apply /tmp/fault-bench-1.yaml
    set -- $(ping_rtt 300)
    one="$one $1"
    unapply
    apply /tmp/fault-bench-10k.yaml
    set -- $(ping_rtt 300)
    many="$many $1"
    unapply
    ip netns exec fb-a tc qdisc add dev va root handle 1: prio
    ip netns exec fb-a tc qdisc add dev va parent 1:3 handle 30: netem delay 10ms
    set -- $(ping_rtt 300)
    bare="$bare $1"
    ip netns exec fb-a tc -batch /tmp/fault-bench-u32.batch
    filters=$(ip netns exec fb-a tc filter show dev va | grep -c 'flowid 1:3')
    set -- $(ping_rtt 300)
    full="$full $1"
    ip netns exec fb-a tc qdisc del dev va root
done
med() { echo $1 | tr ' ' '\n' | sort -n | sed -n 2p; }
none=$(med "$none") one=$(med "$one") many=$(med "$many") bare=$(med "$bare") full=$(med "$full")

echo
echo "### Round trip of an untargeted process with fault's rules"
echo
awk -v a=$none -v b=$one -v c=$many 'BEGIN {
    printf "| no fault | fq + 1 rule | fq + 10,000 rules | ratio 1 rule / none | ratio 10,000 rules / none |\n|---:|---:|---:|---:|---:|\n"
    printf "| %.3f ms | %.3f ms | %.3f ms | %.3f | %.3f |\n", a / 1000, b / 1000, c / 1000, b / a, c / a }'
echo
echo "### Round trip of an untargeted process with netem and u32 filters"
echo
awk -v a=$none -v b=$bare -v c=$full -v n=$filters 'BEGIN {
    printf "| no qdisc | prio + netem, no filters | prio + netem, %d u32 filters | ratio filters / no filters |\n|---:|---:|---:|---:|\n", n
    printf "| %.3f ms | %.3f ms | %.3f ms | %.3f |\n", a / 1000, b / 1000, c / 1000, c / b }'
echo
echo "Median of 3 rounds' p50 of 300 pings each. The filters match distinct /32 destinations"
echo "(10.100.0.0 to 10.100.117.47), none of them the peer; they sit in 8 u32 tables (one per"
echo "filter priority: a table holds at most 4095), so an unmatched packet is compared with all"
echo "of them. netem itself takes no filters, hence the prio root with netem on band 3."
