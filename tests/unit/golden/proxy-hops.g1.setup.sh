set -e
ip -batch - <<'EOF'
netns add client
netns add proxy
netns add server
link add c0 netns client type veth peer name p0 netns proxy
link add p1 netns proxy type veth peer name s0 netns server
EOF
ip -n client -batch - <<'EOF'
link set lo up
addr add 10.77.2.2/24 dev c0
link set c0 up
EOF
tc -n client -batch - <<'EOF'
qdisc replace dev c0 root pfifo_fast
EOF
ip netns exec client sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n proxy -batch - <<'EOF'
link set lo up
addr add 10.77.2.1/24 dev p0
link set p0 up
addr add 10.77.3.1/24 dev p1
link set p1 up
EOF
tc -n proxy -batch - <<'EOF'
qdisc replace dev p0 root pfifo_fast
qdisc replace dev p1 root pfifo_fast
EOF
ip netns exec proxy sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
mkdir -p /run/harness/lab/proxy
printf '%s' 'user root;
worker_processes 2;
pid /run/harness/lab/proxy/nginx.pid;
error_log /run/harness/lab/proxy/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  client_body_temp_path /run/harness/lab/proxy/client_body; proxy_temp_path /run/harness/lab/proxy/proxy; fastcgi_temp_path /run/harness/lab/proxy/fastcgi; uwsgi_temp_path /run/harness/lab/proxy/uwsgi; scgi_temp_path /run/harness/lab/proxy/scgi;
  upstream backend { server 10.77.3.2:80; keepalive 64; }
  server { listen 80 reuseport; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
' > /run/harness/lab/proxy/nginx.conf
ip netns exec proxy nginx -e /run/harness/lab/proxy/error.log -c /run/harness/lab/proxy/nginx.conf
ip -n server -batch - <<'EOF'
link set lo up
addr add 10.77.3.2/24 dev s0
link set s0 up
EOF
tc -n server -batch - <<'EOF'
qdisc replace dev s0 root pfifo_fast
EOF
ip netns exec server sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
mkdir -p /run/harness/lab/server
printf '%s' 'user root;
worker_processes 2;
pid /run/harness/lab/server/nginx.pid;
error_log /run/harness/lab/server/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  client_body_temp_path /run/harness/lab/server/client_body; proxy_temp_path /run/harness/lab/server/proxy; fastcgi_temp_path /run/harness/lab/server/fastcgi; uwsgi_temp_path /run/harness/lab/server/uwsgi; scgi_temp_path /run/harness/lab/server/scgi;
  server { listen 80 reuseport; location / { return 200 "ok\n"; } }
}
' > /run/harness/lab/server/nginx.conf
ip netns exec server nginx -e /run/harness/lab/server/error.log -c /run/harness/lab/server/nginx.conf
