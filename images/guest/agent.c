/*
 * Guest command agent for the harness, on a virtio-serial port.
 *
 * Frames both ways: a 12-byte header {u32 id, u32 len, u8 type, 3 pad},
 * little-endian, then len bytes.  Host -> guest: 'R' run payload with
 * /bin/sh, 'D' dump files (payload: a network namespace name or an empty
 * line, then one glob pattern per line, or @ethtool / @qdisc for those
 * counters, or "@threads PATTERN..." for matching threads; the job's stdout is, per file, NUL, path, newline, contents), 'K' kill the process group of job id,
 * 'P' ping (echoed back).
 * Guest -> host: 'H' hello (payload: uname release), 'O'/'E' stdout/stderr
 * bytes of a job,
 * 'X' exit status of a job (decimal text; 128+signal when killed),
 * 'F' the job could not start (payload: error text).
 *
 * Several jobs run at once, so a test can keep traffic flowing in one while
 * it toggles the kernel in another.  Each command is one vfork+exec of the
 * shell: a static dash from tmpfs when tools/setup could build one (~4.5 ms
 * a command under TCG; the host's dynamic /bin/sh costs ~7.5 ms).  Built
 * static by harness/images.py; also does stage 1's bind mounts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <fnmatch.h>
#include <glob.h>
#include <net/if.h>
#include <linux/ethtool.h>
#include <linux/gen_stats.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_JOBS 64
#define CHUNK (64 * 1024)

struct hdr { uint32_t id, len; uint8_t type, pad[3]; } __attribute__((packed));

struct job { uint32_t id; pid_t pid; int out, err, pidfd; };

static struct job jobs[MAX_JOBS];
static int port;
static cpu_set_t all_cpus;
static const char *shell = "/bin/sh";

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(port, p, len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN) { usleep(1000); continue; }
			return; /* host gone: drop the frame */
		}
		p += n; len -= n;
	}
}

static void send_frame(uint32_t id, uint8_t type, const void *data, uint32_t len)
{
	struct hdr h = { id, len, type, {0} };
	write_all(&h, sizeof(h));
	if (len) write_all(data, len);
}

static void send_text(uint32_t id, uint8_t type, const char *text)
{
	send_frame(id, type, text, strlen(text));
}

/* Forward what a pipe holds; returns 0 at EOF or error (fd closed). */
static int pump(struct job *j, int *fd, uint8_t type)
{
	static char buf[CHUNK];
	for (;;) {
		ssize_t n = read(*fd, buf, sizeof(buf));
		if (n > 0) { send_frame(j->id, type, buf, n); continue; }
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && errno == EAGAIN) return 1;
		close(*fd); *fd = -1;
		return 0;
	}
}

/* "@ethtool": ethtool -S of every link, as "dev counter value" lines. */
static void dump_ethtool(void)
{
	int sock = socket(AF_INET, SOCK_DGRAM, 0);
	struct if_nameindex *links = if_nameindex();
	for (struct if_nameindex *l = links; l && l->if_index; l++) {
		struct { struct ethtool_sset_info info; uint32_t len; } sset = {
			{ .cmd = ETHTOOL_GSSET_INFO, .sset_mask = 1ULL << ETH_SS_STATS } };
		struct ifreq ifr = { 0 };
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", l->if_name);
		ifr.ifr_data = (void *)&sset;
		if (ioctl(sock, SIOCETHTOOL, &ifr) || !sset.info.sset_mask || !sset.len)
			continue;
		uint32_t n = sset.len;
		struct ethtool_gstrings *names = calloc(1, sizeof(*names) + n * ETH_GSTRING_LEN);
		struct ethtool_stats *stats = calloc(1, sizeof(*stats) + n * sizeof(uint64_t));
		names->cmd = ETHTOOL_GSTRINGS; names->string_set = ETH_SS_STATS; names->len = n;
		stats->cmd = ETHTOOL_GSTATS; stats->n_stats = n;
		ifr.ifr_data = (void *)names;
		int ok = !ioctl(sock, SIOCETHTOOL, &ifr);
		ifr.ifr_data = (void *)stats;
		ok = ok && !ioctl(sock, SIOCETHTOOL, &ifr);
		for (uint32_t i = 0; ok && i < n && i < stats->n_stats; i++)
			dprintf(1, "%s %.*s %llu\n", l->if_name, ETH_GSTRING_LEN,
				(char *)names->data + i * ETH_GSTRING_LEN, (unsigned long long)stats->data[i]);
		free(names); free(stats);
	}
	if (links) if_freenameindex(links);
	close(sock);
}

static void tc_handle(char *out, size_t len, uint32_t h)
{
	if (h == TC_H_ROOT) snprintf(out, len, "root");
	else if (!h) snprintf(out, len, "0:");
	else if (!TC_H_MAJ(h)) snprintf(out, len, ":%x", TC_H_MIN(h));
	else if (!TC_H_MIN(h)) snprintf(out, len, "%x:", TC_H_MAJ(h) >> 16);
	else snprintf(out, len, "%x:%x", TC_H_MAJ(h) >> 16, TC_H_MIN(h));
}

/* "@qdisc": every qdisc (an RTM_GETQDISC dump), as lines of
 * "dev kind handle parent bytes packets drops overlimits requeues backlog qlen". */
static void dump_qdiscs(void)
{
	static char buf[CHUNK];
	struct { struct nlmsghdr nh; struct tcmsg tc; } req = {
		{ NLMSG_LENGTH(sizeof(struct tcmsg)), RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, 1, 0 }, { 0 } };
	int sock = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (sock < 0 || send(sock, &req, req.nh.nlmsg_len, 0) < 0) return;
	for (;;) {
		ssize_t n = recv(sock, buf, sizeof(buf), 0);
		if (n <= 0) break;
		for (struct nlmsghdr *nh = (void *)buf; NLMSG_OK(nh, n); nh = NLMSG_NEXT(nh, n)) {
			if (nh->nlmsg_type == NLMSG_DONE || nh->nlmsg_type == NLMSG_ERROR) { close(sock); return; }
			struct tcmsg *tc = NLMSG_DATA(nh);
			char kind[32] = "?", dev[IFNAMSIZ] = "?", handle[16], parent[16];
			struct gnet_stats_basic basic = { 0 };
			struct gnet_stats_queue queue = { 0 };
			uint64_t packets64 = 0; int have64 = 0;
			int len = nh->nlmsg_len - NLMSG_LENGTH(sizeof(*tc));
			for (struct rtattr *a = (void *)((char *)tc + NLMSG_ALIGN(sizeof(*tc))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
				if (a->rta_type == TCA_KIND)
					snprintf(kind, sizeof(kind), "%s", (char *)RTA_DATA(a));
				if (a->rta_type != TCA_STATS2) continue;
				int slen = RTA_PAYLOAD(a);
				for (struct rtattr *b = RTA_DATA(a); RTA_OK(b, slen); b = RTA_NEXT(b, slen)) {
					if (b->rta_type == TCA_STATS_BASIC)
						memcpy(&basic, RTA_DATA(b), RTA_PAYLOAD(b) < sizeof(basic) ? RTA_PAYLOAD(b) : sizeof(basic));
					else if (b->rta_type == TCA_STATS_QUEUE)
						memcpy(&queue, RTA_DATA(b), RTA_PAYLOAD(b) < sizeof(queue) ? RTA_PAYLOAD(b) : sizeof(queue));
					else if (b->rta_type == TCA_STATS_PKT64) {
						memcpy(&packets64, RTA_DATA(b), sizeof(packets64)); have64 = 1;
					}
				}
			}
			if_indextoname(tc->tcm_ifindex, dev);
			tc_handle(handle, sizeof(handle), tc->tcm_handle);
			tc_handle(parent, sizeof(parent), tc->tcm_parent);
			dprintf(1, "%s %s %s %s %llu %llu %u %u %u %u %u\n", dev, kind, handle, parent,
				(unsigned long long)basic.bytes, have64 ? (unsigned long long)packets64 : basic.packets,
				queue.drops, queue.overlimits, queue.requeues, queue.backlog, queue.qlen);
		}
	}
	close(sock);
}

/* "@threads PATTERN...": "pid cpus-allowed-list name" of each thread whose
 * name matches a pattern (fnmatch); status is read only for those. */
static void dump_threads(char *patterns)
{
	char path[64], line[512], name[64];
	DIR *proc = opendir("/proc");
	for (struct dirent *e; proc && (e = readdir(proc));) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
		snprintf(path, sizeof(path), "/proc/%.20s/comm", e->d_name);
		int fd = open(path, O_RDONLY);
		if (fd < 0) continue;
		ssize_t n = read(fd, name, sizeof(name) - 1);
		close(fd);
		if (n <= 0) continue;
		name[n - (name[n - 1] == '\n')] = 0;
		int match = 0;
		char copy[4096], *save;
		snprintf(copy, sizeof(copy), "%s", patterns);
		for (char *p = strtok_r(copy, " ", &save); p && !match; p = strtok_r(NULL, " ", &save))
			match = !fnmatch(p, name, 0);
		if (!match) continue;
		snprintf(path, sizeof(path), "/proc/%.20s/status", e->d_name);
		FILE *f = fopen(path, "r");
		while (f && fgets(line, sizeof(line), f))
			if (!strncmp(line, "Cpus_allowed_list:", 18)) {
				dprintf(1, "%s %s %s\n", e->d_name, strtok_r(line + 18, " \t\n", &save), name);
				break;
			}
		if (f) fclose(f);
	}
	if (proc) closedir(proc);
}

/* The 'D' job: procfs and sysfs read with a few large reads each, where a
 * shell's read builtin would make one syscall per byte (and /proc/sys
 * handlers return EOF to reads at an offset). */
static void dump(char *request)
{
	static char buf[CHUNK];
	char *netns = request, *patterns = strchr(request, '\n');
	if (patterns) *patterns++ = 0; else patterns = "";
	if (*netns) {
		char path[4096];
		snprintf(path, sizeof(path), "/run/netns/%.255s", netns);
		int fd = open(path, O_RDONLY);
		if (fd < 0 || setns(fd, CLONE_NEWNET)) { perror(path); _exit(1); }
	}
	for (char *pattern = strtok(patterns, "\n"); pattern; pattern = strtok(NULL, "\n")) {
		glob_t g;
		if (!strncmp(pattern, "@threads ", 9)) {
			dprintf(1, "%c@threads\n", 0);
			dump_threads(pattern + 9);
			continue;
		}
		if (!strcmp(pattern, "@ethtool") || !strcmp(pattern, "@qdisc")) {
			dprintf(1, "%c%s\n", 0, pattern);
			pattern[1] == 'e' ? dump_ethtool() : dump_qdiscs();
			continue;
		}
		if (glob(pattern, 0, NULL, &g)) continue;
		for (size_t i = 0; i < g.gl_pathc; i++) {
			int fd = open(g.gl_pathv[i], O_RDONLY);
			if (fd < 0) continue; /* a process that just exited */
			dprintf(1, "%c%s\n", 0, g.gl_pathv[i]);
			ssize_t n;
			while ((n = read(fd, buf, sizeof(buf))) > 0)
				if (write(1, buf, n) != n) _exit(1);
			close(fd);
		}
		globfree(&g);
	}
	_exit(0);
}

static void start(uint32_t id, char *command, int is_dump)
{
	int out[2], err[2], slot;
	for (slot = 0; slot < MAX_JOBS && jobs[slot].pid; slot++) ;
	if (slot == MAX_JOBS) { send_text(id, 'F', "agent: too many jobs"); return; }
	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		send_text(id, 'F', strerror(errno)); return;
	}
	/* vfork: no page tables copied; the agent resumes when the child execs.
	 * A dump runs in the child itself, so it needs a real fork. */
	pid_t pid = is_dump ? fork() : vfork();
	if (pid < 0) { send_text(id, 'F', strerror(errno)); return; }
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		setsid();
		sched_setaffinity(0, sizeof(all_cpus), &all_cpus);
		dup2(null, 0); dup2(out[1], 1); dup2(err[1], 2);
		signal(SIGPIPE, SIG_DFL);
		if (is_dump) dump(command);
		execl(shell, "sh", "-c", command, (char *)NULL);
		_exit(127);
	}
	close(out[1]); close(err[1]);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	jobs[slot] = (struct job){ id, pid, out[0], err[0], (int)syscall(SYS_pidfd_open, pid, 0) };
}

static void finish(struct job *j)
{
	int status = 0;
	char text[16];
	waitpid(j->pid, &status, 0);
	/* The shell is gone; what it wrote is in the pipes.  Children it left
	 * in the background must not hold the job open. */
	if (j->out >= 0) { pump(j, &j->out, 'O'); if (j->out >= 0) close(j->out); }
	if (j->err >= 0) { pump(j, &j->err, 'E'); if (j->err >= 0) close(j->err); }
	close(j->pidfd);
	snprintf(text, sizeof(text), "%d",
		 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	send_text(j->id, 'X', text);
	memset(j, 0, sizeof(*j));
}

/* As PID 1 the agent inherits orphans: reap those that are not jobs. */
static void reap_orphans(void)
{
	for (;;) {
		siginfo_t si = { 0 };
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) || !si.si_pid)
			return;
		for (int i = 0; i < MAX_JOBS; i++)
			if (jobs[i].pid == si.si_pid)
				return; /* finish() collects it */
		waitpid(si.si_pid, NULL, 0);
	}
}

static void handle(struct hdr *h, char *payload)
{
	if (h->type == 'R' || h->type == 'D') {
		start(h->id, payload, h->type == 'D');
	} else if (h->type == 'P') {
		send_frame(h->id, 'P', payload, h->len); /* echo: measures the channel */
	} else if (h->type == 'K') {
		for (int i = 0; i < MAX_JOBS; i++)
			if (jobs[i].pid && jobs[i].id == h->id)
				kill(-jobs[i].pid, SIGKILL);
	}
}

/* agent --bind LIST FROM TO: bind FROM/path over TO/path for each line of
 * LIST, in one process (a busybox mount per file costs ~4 ms under TCG). */
static int bind_list(const char *list, const char *from, const char *to)
{
	char line[4096], src[8192], dst[8192];
	FILE *f = fopen(list, "r");
	if (!f) { perror(list); return 1; }
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (!*line) continue;
		snprintf(src, sizeof(src), "%s%s", from, line);
		snprintf(dst, sizeof(dst), "%s%s", to, line);
		if (mount(src, dst, NULL, MS_BIND, NULL))
			fprintf(stderr, "agent: bind %s: %s\n", dst, strerror(errno));
	}
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	static char in[1 << 20];
	size_t have = 0;
	struct utsname u;

	if (argc == 5 && !strcmp(argv[1], "--bind"))
		return bind_list(argv[2], argv[3], argv[4]);
	if (argc >= 3 && !strcmp(argv[1], "--dump")) { /* the same dump, for host namespaces */
		size_t len = 0;
		for (int i = 2; i < argc; i++)
			len += snprintf(in + len, sizeof(in) - len, "%s%s", argv[i], i + 1 < argc ? "\n" : "");
		dump(in);
	}
	if (argc < 2) {
		fprintf(stderr, "usage: agent PORT [SHELL] | --bind LIST FROM TO | --dump NETNS PATTERN...\n");
		return 2;
	}
	if (argc > 2) shell = argv[2];
	port = open(argv[1], O_RDWR | O_CLOEXEC);
	if (port < 0) { perror(argv[1]); return 1; }
	signal(SIGPIPE, SIG_IGN);
	/* Fork onto our own CPU: waking an idle vCPU costs milliseconds under
	 * TCG.  Children get every CPU back before they exec. */
	sched_getaffinity(0, sizeof(all_cpus), &all_cpus);
	{
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(sched_getcpu(), &one);
		sched_setaffinity(0, sizeof(one), &one);
	}
	uname(&u);
	send_text(0, 'H', u.release);

	for (;;) {
		struct pollfd fds[1 + 3 * MAX_JOBS];
		struct { struct job *j; int kind; } who[1 + 3 * MAX_JOBS];
		int n = 0;
		fds[n++] = (struct pollfd){ port, POLLIN, 0 };
		for (int i = 0; i < MAX_JOBS; i++) {
			struct job *j = &jobs[i];
			if (!j->pid) continue;
			if (j->out >= 0) { who[n].j = j; who[n].kind = 'O'; fds[n++] = (struct pollfd){ j->out, POLLIN, 0 }; }
			if (j->err >= 0) { who[n].j = j; who[n].kind = 'E'; fds[n++] = (struct pollfd){ j->err, POLLIN, 0 }; }
			who[n].j = j; who[n].kind = 'X'; fds[n++] = (struct pollfd){ j->pidfd, POLLIN, 0 };
		}
		int ready = poll(fds, n, 1000);
		reap_orphans();
		if (ready <= 0) continue;

		for (int k = 1; k < n; k++) {
			struct job *j = who[k].j;
			if (!fds[k].revents || !j->pid) continue;
			if (who[k].kind == 'O' && j->out == fds[k].fd) pump(j, &j->out, 'O');
			else if (who[k].kind == 'E' && j->err == fds[k].fd) pump(j, &j->err, 'E');
			else if (who[k].kind == 'X') finish(j);
		}

		if (fds[0].revents & POLLIN) {
			ssize_t r = read(port, in + have, sizeof(in) - have - 1);
			if (r <= 0) { usleep(20000); continue; }
			have += r;
			while (have >= sizeof(struct hdr)) {
				struct hdr h;
				memcpy(&h, in, sizeof(h));
				size_t total = sizeof(h) + h.len;
				if (total >= sizeof(in)) { have = 0; break; } /* oversized: drop */
				if (have < total) break;
				char save = in[total];
				in[total] = 0; /* payload as a C string */
				handle(&h, in + sizeof(h));
				in[total] = save;
				memmove(in, in + total, have - total);
				have -= total;
			}
		} else if (fds[0].revents & (POLLHUP | POLLERR)) {
			usleep(20000); /* host side not connected yet */
		}
	}
}
