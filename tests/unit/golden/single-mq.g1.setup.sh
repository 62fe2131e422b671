set -e
d=$(grep -lx 52:54:00:00:00:01 /sys/class/net/*/address | cut -d/ -f5)
[ "$d" = eth0 ] || ip link set dev "$d" name eth0
ip link set dev eth0 mtu 1500
ethtool -L eth0 combined 2
ip addr add 10.77.0.2/24 dev eth0
ip link set dev eth0 up
echo 2 > /sys/class/net/eth0/queues/rx-0/rps_cpus
echo 1 > /sys/class/net/eth0/queues/rx-1/rps_cpus
