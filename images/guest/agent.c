/*
 * Guest command agent for the harness, on a virtio-serial port.
 *
 * Frames both ways: a 12-byte header {u32 id, u32 len, u8 type, 3 pad},
 * little-endian, then len bytes.  Host -> guest: 'R' run payload with
 * /bin/sh, 'D' dump files (payload: a network namespace name or an empty
 * line, then one glob pattern per line, or @ethtool / @qdisc for those
 * counters, or "@threads PATTERN..." for matching threads; the job's stdout is, per file, NUL, path, newline, contents), 'K' kill the process group of job id,
 * 'P' ping (echoed back), 'T' a command or a shell on a pseudo-terminal,
 * 'S' run payload with a pipe on its stdin (a stream: a relay, a server),
 * 'I' input for a 'T' or 'S' job (an empty 'I' closes an 'S' job's stdin),
 * 'W' a 'T' job's window size.
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
#include <linux/if_packet.h>
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
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_JOBS 64
#define CHUNK (64 * 1024)

struct hdr { uint32_t id, len; uint8_t type, pad[3]; } __attribute__((packed));

struct job { uint32_t id; pid_t pid; int out, err, pidfd, tty, in; }; /* in: an 'S' job's stdin, else -1 */

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

/* The CPUs jobs may run on: all of them, unless a test keeps some for
 * itself (a CPU hog: a job the scheduler placed there would never run)
 * by writing a CPU list ("0-1,3") to JOB_CPUS. */
#define JOB_CPUS "/run/harness/job-cpus"

static void job_cpus(cpu_set_t *set)
{
	char buf[256];
	int fd = open(JOB_CPUS, O_RDONLY | O_CLOEXEC);
	*set = all_cpus;
	if (fd < 0) return;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) return;
	buf[n] = 0;
	cpu_set_t want;
	CPU_ZERO(&want);
	for (char *p = buf; *p; ) {
		char *end;
		long lo = strtol(p, &end, 10), hi = lo;
		if (end == p) break;
		if (*end == '-') hi = strtol(end + 1, &end, 10);
		for (long c = lo; c <= hi && c < CPU_SETSIZE; c++) CPU_SET(c, &want);
		p = end + (*end == ',');
		if (*end != ',') break;
	}
	CPU_AND(&want, &want, &all_cpus);
	if (CPU_COUNT(&want)) *set = want;
}

static void start(uint32_t id, char *command, int is_dump, int with_stdin)
{
	int out[2], err[2], in[2] = { -1, -1 }, slot;
	cpu_set_t cpus;
	for (slot = 0; slot < MAX_JOBS && jobs[slot].pid; slot++) ;
	if (slot == MAX_JOBS) { send_text(id, 'F', "agent: too many jobs"); return; }
	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (with_stdin && pipe2(in, O_CLOEXEC))) {
		send_text(id, 'F', strerror(errno)); return;
	}
	job_cpus(&cpus);
	/* vfork: no page tables copied; the agent resumes when the child execs.
	 * A dump runs in the child itself, so it needs a real fork. */
	pid_t pid = is_dump ? fork() : vfork();
	if (pid < 0) { send_text(id, 'F', strerror(errno)); return; }
	if (pid == 0) {
		int null = with_stdin ? in[0] : open("/dev/null", O_RDONLY);
		setsid();
		sched_setaffinity(0, sizeof(cpus), &cpus);
		dup2(null, 0); dup2(out[1], 1); dup2(err[1], 2);
		signal(SIGPIPE, SIG_DFL);
		if (is_dump) dump(command);
		execl(shell, "sh", "-c", command, (char *)NULL);
		_exit(127);
	}
	close(out[1]); close(err[1]);
	if (with_stdin) close(in[0]);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	jobs[slot] = (struct job){ id, pid, out[0], err[0], (int)syscall(SYS_pidfd_open, pid, 0), 0, in[1] };
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
	if (j->in >= 0) close(j->in);
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

/* 'T': a command (or an interactive shell when it is empty) on a
 * pseudo-terminal, for `harness shell`.  Payload: "ROWS COLS TERM\n" then
 * the command.  Its output comes back as 'O' frames; 'I' frames carry
 * keystrokes to it, 'W' frames ("ROWS COLS") a new window size. */
static void start_tty(uint32_t id, char *payload)
{
	int slot, rows = 24, cols = 80;
	char term[64] = "xterm", *command = strchr(payload, '\n');
	cpu_set_t cpus;
	for (slot = 0; slot < MAX_JOBS && jobs[slot].pid; slot++) ;
	if (slot == MAX_JOBS) { send_text(id, 'F', "agent: too many jobs"); return; }
	sscanf(payload, "%d %d %63s", &rows, &cols, term);
	command = command ? command + 1 : "";
	int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0 || grantpt(master) || unlockpt(master)) {
		send_text(id, 'F', strerror(errno));
		if (master >= 0) close(master);
		return;
	}
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	ioctl(master, TIOCSWINSZ, &ws);
	char *slave_name = ptsname(master);
	job_cpus(&cpus);
	pid_t pid = fork();
	if (pid < 0) { send_text(id, 'F', strerror(errno)); close(master); return; }
	if (pid == 0) {
		setsid();
		int slave = open(slave_name, O_RDWR);
		ioctl(slave, TIOCSCTTY, 0);
		dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
		if (slave > 2) close(slave);
		sched_setaffinity(0, sizeof(cpus), &cpus);
		signal(SIGPIPE, SIG_DFL);
		setenv("TERM", term, 1);
		if (*command) execl(shell, "sh", "-c", command, (char *)NULL);
		else if (access("/bin/bash", X_OK) == 0) execl("/bin/bash", "bash", "-i", (char *)NULL);
		else execl(shell, "sh", "-i", (char *)NULL);
		_exit(127);
	}
	fcntl(master, F_SETFL, O_NONBLOCK);
	jobs[slot] = (struct job){ id, pid, master, -1, (int)syscall(SYS_pidfd_open, pid, 0), 1, -1 };
}

static struct job *job_by_id(uint32_t id)
{
	for (int i = 0; i < MAX_JOBS; i++)
		if (jobs[i].pid && jobs[i].id == id) return &jobs[i];
	return NULL;
}

static void handle(struct hdr *h, char *payload)
{
	if (h->type == 'R' || h->type == 'D' || h->type == 'S') {
		start(h->id, payload, h->type == 'D', h->type == 'S');
	} else if (h->type == 'P') {
		send_frame(h->id, 'P', payload, h->len); /* echo: measures the channel */
	} else if (h->type == 'K') {
		for (int i = 0; i < MAX_JOBS; i++)
			if (jobs[i].pid && jobs[i].id == h->id)
				kill(-jobs[i].pid, SIGKILL);
	} else if (h->type == 'T') {
		start_tty(h->id, payload);
	} else if (h->type == 'I' || h->type == 'W') {
		struct job *j = job_by_id(h->id);
		int to = !j ? -1 : j->tty ? j->out : h->type == 'I' ? j->in : -1;
		if (to < 0) return;
		if (h->type == 'I' && !j->tty && !h->len) {  /* end of an 'S' job's input */
			close(j->in); j->in = -1;
		} else if (h->type == 'I') {
			for (uint32_t done = 0; done < h->len; ) {
				ssize_t n = write(to, payload + done, h->len - done);
				if (n < 0 && (errno == EAGAIN || errno == EINTR)) { usleep(1000); continue; }
				if (n <= 0) break;
				done += n;
			}
		} else {
			struct winsize ws = { 0 };
			int rows = 0, cols = 0;
			if (sscanf(payload, "%d %d", &rows, &cols) == 2) {
				ws.ws_row = rows; ws.ws_col = cols;
				ioctl(j->out, TIOCSWINSZ, &ws);
			}
		}
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

/*
 * --hog CPU SECONDS [PRIORITY [PULSE_US]]: hold CPU with a SCHED_FIFO busy
 * loop, for tests that keep a thread off its CPU on purpose.  Prints
 * "ready PID" once it runs there.  Each SIGUSR1 is a pulse: the hog sleeps
 * PULSE_US and spins again, so whatever waits for the CPU runs briefly.
 * It stops at SECONDS, on SIGTERM, or as soon as it is moved off its CPU
 * (the CPU went offline), printing why.
 */
static volatile sig_atomic_t hog_pulses, hog_stop;
static void hog_on_usr1(int sig) { (void)sig; hog_pulses++; }
static void hog_on_term(int sig) { (void)sig; hog_stop = 1; }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int hog(int cpu, double seconds, int priority, long pulse_us)
{
	cpu_set_t one;
	struct sched_param sp = { .sched_priority = priority };
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	signal(SIGUSR1, hog_on_usr1);
	signal(SIGTERM, hog_on_term);
	if (sched_setaffinity(0, sizeof(one), &one)) { perror("hog: sched_setaffinity"); return 1; }
	if (sched_setscheduler(0, SCHED_FIFO, &sp)) { perror("hog: sched_setscheduler"); return 1; }
	while (sched_getcpu() != cpu)
		sched_yield();
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	double end = now_s() + seconds;
	unsigned long spins = 0;
	while (!hog_stop) {
		if (hog_pulses) {
			struct timespec ts = { pulse_us / 1000000, (pulse_us % 1000000) * 1000 };
			hog_pulses--;
			nanosleep(&ts, NULL);
		}
		if ((++spins & 0xfff) == 0) {
			if (sched_getcpu() != cpu) { printf("migrated\n"); return 0; }
			if (now_s() >= end) { printf("done\n"); return 0; }
		}
	}
	printf("stopped\n");
	return 0;
}

/*
 * --send DEV DST_MAC COUNT [SIZE]: COUNT copies of one UDP/IPv4 frame
 * (198.18.0.1:9 -> 198.18.0.2:9, SIZE bytes, 60 by default) out of DEV
 * through a packet socket, as fast as the kernel takes them.  Unlike
 * pktgen it does not wait for the last packet to be consumed, so it can
 * fill a backlog whose consumer is held.  Prints "sent N refused M".
 */
static uint16_t ip_checksum(const uint8_t *p, int len)
{
	uint32_t sum = 0;
	for (int i = 0; i < len; i += 2) sum += (p[i] << 8) | p[i + 1];
	while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static int send_frames(const char *dev, const char *mac, long count, int size)
{
	uint8_t frame[1514] = { 0 };
	unsigned int m[6];
	if (size < 60) size = 60;
	if (size > (int)sizeof(frame)) size = sizeof(frame);
	if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
		fprintf(stderr, "send: bad MAC %s\n", mac);
		return 2;
	}
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(dev), .sll_halen = 6 };
	if (fd < 0 || !to.sll_ifindex) { perror(dev); return 1; }
	/* queued packets stay charged to the socket until consumed */
	int sndbuf = 256 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
	for (int i = 0; i < 6; i++) frame[i] = to.sll_addr[i] = m[i];
	frame[6] = 0x02; frame[11] = 0x01;                   /* source 02:00:00:00:00:01 */
	frame[12] = 0x08; frame[13] = 0x00;                   /* IPv4 */
	uint8_t *ip = frame + 14, *udp = ip + 20;
	int ip_len = size - 14;
	ip[0] = 0x45; ip[2] = ip_len >> 8; ip[3] = ip_len; ip[8] = 64; ip[9] = 17;
	ip[12] = 198; ip[13] = 18; ip[14] = 0; ip[15] = 1;
	ip[16] = 198; ip[17] = 18; ip[18] = 0; ip[19] = 2;
	uint16_t sum = ip_checksum(ip, 20);
	ip[10] = sum >> 8; ip[11] = sum;
	udp[1] = 9; udp[3] = 9; udp[4] = (ip_len - 20) >> 8; udp[5] = ip_len - 20;
	long sent = 0, refused = 0;
	for (long i = 0; i < count; i++) {
		if (sendto(fd, frame, size, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof(to)) == size) sent++;
		else refused++;
	}
	printf("sent %ld refused %ld\n", sent, refused);
	return 0;
}

int main(int argc, char **argv)
{
	static char in[1 << 20];
	size_t have = 0;
	struct utsname u;

	if (argc >= 5 && !strcmp(argv[1], "--send"))
		return send_frames(argv[2], argv[3], atol(argv[4]), argc > 5 ? atoi(argv[5]) : 60);
	if (argc >= 4 && !strcmp(argv[1], "--hog"))
		return hog(atoi(argv[2]), atof(argv[3]), argc > 4 ? atoi(argv[4]) : 50,
			   argc > 5 ? atol(argv[5]) : 1000);
	if (argc == 5 && !strcmp(argv[1], "--bind"))
		return bind_list(argv[2], argv[3], argv[4]);
	if (argc >= 3 && !strcmp(argv[1], "--dump")) { /* the same dump, for host namespaces */
		size_t len = 0;
		for (int i = 2; i < argc; i++)
			len += snprintf(in + len, sizeof(in) - len, "%s%s", argv[i], i + 1 < argc ? "\n" : "");
		dump(in);
	}
	if (argc < 2) {
		fprintf(stderr, "usage: agent PORT [SHELL] | --bind LIST FROM TO | --dump NETNS PATTERN... | --hog CPU SECONDS [PRIO [PULSE_US]] | --send DEV MAC COUNT [SIZE]\n");
		return 2;
	}
	if (argc > 2) shell = argv[2];
	port = open(argv[1], O_RDWR | O_CLOEXEC);
	if (port < 0) { perror(argv[1]); return 1; }
	signal(SIGPIPE, SIG_IGN);
	/* Fork on CPU 0, the boot CPU (never taken offline, never hogged by a
	 * test): waking an idle vCPU costs milliseconds under TCG.  Children
	 * get their CPUs back (job_cpus()) before they exec. */
	sched_getaffinity(0, sizeof(all_cpus), &all_cpus);
	{
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(0, &one);
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
