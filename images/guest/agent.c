/*
 * Guest command agent for the harness, on a virtio-serial port.
 *
 * Frames both ways: a 12-byte header {u32 id, u32 len, u8 type, 3 pad},
 * little-endian, then len bytes.  Host -> guest: 'R' run payload with
 * /bin/sh, 'K' kill the process group of job id, 'P' ping (echoed back).
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

static void start(uint32_t id, char *command)
{
	int out[2], err[2], slot;
	for (slot = 0; slot < MAX_JOBS && jobs[slot].pid; slot++) ;
	if (slot == MAX_JOBS) { send_text(id, 'F', "agent: too many jobs"); return; }
	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		send_text(id, 'F', strerror(errno)); return;
	}
	/* vfork: no page tables copied; the agent resumes when the child execs. */
	pid_t pid = vfork();
	if (pid < 0) { send_text(id, 'F', strerror(errno)); return; }
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		setsid();
		sched_setaffinity(0, sizeof(all_cpus), &all_cpus);
		dup2(null, 0); dup2(out[1], 1); dup2(err[1], 2);
		signal(SIGPIPE, SIG_DFL);
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
	if (h->type == 'R') {
		start(h->id, payload);
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
	if (argc < 2) { fprintf(stderr, "usage: agent PORT [SHELL] | --bind LIST FROM TO\n"); return 2; }
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
