set -e
d=; for a in /sys/class/net/*/address; do read -r m < "$a"; [ "$m" = 52:54:00:00:00:01 ] && d=${a%/address}; done
d=${d##*/}; [ -n "$d" ] || { echo "no NIC with MAC 52:54:00:00:00:01" >&2; exit 1; }
[ "$d" = eth0 ] || ip link set dev "$d" name eth0
ethtool -L eth0 combined 2
echo 2 > /sys/class/net/eth0/queues/rx-0/rps_cpus
echo 1 > /sys/class/net/eth0/queues/rx-1/rps_cpus
ip -batch - <<'EOF'
link set dev eth0 mtu 1500
addr add 10.77.0.2/24 dev eth0
link set dev eth0 up
EOF
