/* Opening segments: what is refused, and why. */
#include "tsupport.h"
#include "shmetrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct shmet_seg_config small = {4, 1 << 16, 0, 0, 200};

static const char *fresh(const char *tag)
{
	const char *p = tsupport_segment(tag);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(p, SHMET_ATTACH_CREATE, &small, &s, err), SHMET_OK);
	assert_true(s.map.created);
	shmet_segment_close(&s);
	return p;
}

static void expect_refused(const char *path, int code, const char *words)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF] = "";
	int rc = shmet_segment_open(path, SHMET_ATTACH_READONLY, &small, &s, err);
	if (rc != code)
		fail_msg("expected %d (%s), got %d: %s", code, shmet_strerror(code), rc, err);
	if (!strstr(err, words))
		fail_msg("message \"%s\" lacks \"%s\"", err, words);
}

static void poke(const char *path, off_t off, const void *bytes, size_t n)
{
	int fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, bytes, n, off), (ssize_t)n);
	close(fd);
}

static void test_segment_created_private_and_valid(void **state)
{
	(void)state;
	const char *p = fresh("ok");
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(p, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	assert_int_equal(s.regions, 4);
	assert_int_equal(s.region_size, 1 << 16);
	shmet_segment_close(&s);
}

static void test_segment_wrong_magic_refused(void **state)
{
	(void)state;
	const char *p = fresh("magic");
	poke(p, 0, "NOTOURS!", 8);
	expect_refused(p, SHMET_E_NOT_SEGMENT, "not a shmetrics segment");
}

static void test_segment_other_major_version_refused(void **state)
{
	(void)state;
	const char *p = fresh("version");
	uint32_t v = SHMET_VERSION_MAJOR + 1;
	poke(p, offsetof(struct shmet_seg_header, sh_version_major), &v, 4);
	expect_refused(p, SHMET_E_VERSION, "layout version 3");
}

static void test_segment_truncated_refused(void **state)
{
	(void)state;
	const char *p = fresh("trunc");
	assert_int_equal(truncate(p, 8192), 0);
	expect_refused(p, SHMET_E_CORRUPT, "truncated");
	assert_int_equal(truncate(p, 100), 0); /* shorter than a header: never initialised */
	expect_refused(p, SHMET_E_TIMEOUT, "no initialised segment");
}

static void test_segment_inconsistent_sizes_refused(void **state)
{
	(void)state;
	const char *p = fresh("sizes");
	uint64_t huge = UINT64_C(1) << 40;
	poke(p, offsetof(struct shmet_seg_header, sh_region_size), &huge, 8);
	expect_refused(p, SHMET_E_CORRUPT, "implausible");
	const char *q = fresh("offsets");
	uint64_t off = 12345;
	poke(q, offsetof(struct shmet_seg_header, sh_retired_off), &off, 8);
	expect_refused(q, SHMET_E_CORRUPT, "offsets disagree");
}

static void test_segment_world_writable_refused(void **state)
{
	(void)state;
	const char *p = fresh("mode");
	assert_int_equal(chmod(p, 0666), 0);
	expect_refused(p, SHMET_E_PERMISSION, "world-writable");
	/* and a creator cannot ask for it */
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	struct shmet_seg_config open_to_all = {4, 1 << 16, 0, 0666, 0};
	assert_int_equal(shmet_segment_open(tsupport_segment("mode2"), SHMET_ATTACH_CREATE, &open_to_all, &s, err),
			 SHMET_E_INVALID_ARG);
}

static void test_segment_symlink_refused(void **state)
{
	(void)state;
	const char *p = fresh("target");
	const char *link = tsupport_segment("link");
	assert_int_equal(symlink(p, link), 0);
	expect_refused(link, SHMET_E_PERMISSION, "symbolic link");
}

/* Open path in a child bounded by an alarm: a blocking open (a FIFO with no
 * writer) must not hang the test.  Returns the open's code, or 100 + the
 * signal that ended the child. */
static int open_bounded(const char *path, int flags, const struct shmet_seg_config *cfg, char *err)
{
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		alarm(5);
		struct shmet_segment s;
		char why[SHMET_ERRBUF] = "";
		int rc = shmet_segment_open(path, flags, cfg, &s, why);
		if (rc == SHMET_OK)
			shmet_segment_close(&s);
		if (write(pfd[1], why, sizeof why) < 0)
			_exit(99);
		_exit(-rc);
	}
	close(pfd[1]);
	err[0] = 0;
	ssize_t n = read(pfd[0], err, SHMET_ERRBUF);
	if (n <= 0)
		err[0] = 0;
	err[SHMET_ERRBUF - 1] = 0;
	close(pfd[0]);
	int st = tsupport_wait(pid);
	return st > 128 ? 100 + st - 128 : -st;
}

static void expect_type_refused(const char *path, const char *words)
{
	char err[SHMET_ERRBUF];
	const int modes[] = {SHMET_ATTACH_READONLY, 0, SHMET_ATTACH_CREATE};
	for (int i = 0; i < 3; i++) {
		int rc = open_bounded(path, modes[i], &small, err);
		if (rc != SHMET_E_PERMISSION)
			fail_msg("%s (flags %d): expected %d, got %d (>100: killed by signal rc-100) \"%s\"", path, modes[i],
				 SHMET_E_PERMISSION, rc, err);
		if (!strstr(err, words) || !strstr(err, "not a regular file"))
			fail_msg("%s: message \"%s\" lacks \"%s\"", path, err, words);
	}
}

static void test_segment_fifo_directory_device_refused(void **state)
{
	(void)state;
	const char *fifo = tsupport_segment("fifo");
	assert_int_equal(mkfifo(fifo, 0600), 0);
	expect_type_refused(fifo, "FIFO");
	const char *dir = tsupport_segment("dir");
	assert_int_equal(mkdir(dir, 0700), 0);
	expect_type_refused(dir, "directory");
	rmdir(dir);
	expect_type_refused("/dev/null", "character device");
}

/* Root trusts no other user's segment unless told which one. */
static void test_segment_other_owner_refused_unless_allowed(void **state)
{
	(void)state;
	if (geteuid() != 0)
		skip(); /* chown to another uid needs root */
	const char *p = fresh("owner");
	assert_int_equal(chown(p, 65534, 65534), 0);
	char err[SHMET_ERRBUF];
	const int modes[] = {SHMET_ATTACH_READONLY, 0, SHMET_ATTACH_CREATE};
	for (int i = 0; i < 3; i++) {
		int rc = open_bounded(p, modes[i], &small, err);
		if (rc != SHMET_E_PERMISSION || !strstr(err, "owned by uid 65534"))
			fail_msg("flags %d: expected %d \"owned by uid 65534\", got %d \"%s\"", modes[i], SHMET_E_PERMISSION,
				 rc, err);
	}
	struct shmet_seg_config other = small;
	other.allow_owner = 1;
	other.owner_uid = 1234; /* another owner allowed: still refused */
	assert_int_equal(open_bounded(p, 0, &other, err), SHMET_E_PERMISSION);
	other.owner_uid = 65534;
	for (int i = 0; i < 3; i++) {
		int rc = open_bounded(p, modes[i], &other, err);
		if (rc != SHMET_OK)
			fail_msg("flags %d with owner 65534 allowed: got %d \"%s\"", modes[i], rc, err);
	}
	/* the writer: refused, then allowed by SHMETRICS_SEGMENT_OWNER */
	for (int allow = 0; allow < 2; allow++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			if (allow)
				setenv(SHMET_ENV_SEGMENT_OWNER, "65534", 1);
			else
				unsetenv(SHMET_ENV_SEGMENT_OWNER);
			struct shmet_options o = {p, 0, 0, 0, false};
			int rc = shmet_init(&o);
			if (rc != SHMET_OK)
				fprintf(stderr, "writer (allow %d): %s\n", allow, shmet_last_error());
			_exit(rc == SHMET_OK ? 0 : rc == SHMET_E_PERMISSION && strstr(shmet_last_error(), "65534") ? 1 : 2);
		}
		int st = tsupport_wait(pid);
		if (st != (allow ? 0 : 1))
			fail_msg("writer with%s SHMETRICS_SEGMENT_OWNER: exit %d", allow ? "" : "out", st);
	}
	pid_t pid = fork();
	if (pid == 0) {
		setenv(SHMET_ENV_SEGMENT_OWNER, "nobody", 1);
		struct shmet_options o = {p, 0, 0, 0, false};
		_exit(shmet_init(&o) == SHMET_E_INVALID_ARG ? 0 : 1);
	}
	assert_int_equal(tsupport_wait(pid), 0);
}

static void test_segment_group_mode_honoured(void **state)
{
	(void)state;
	const char *p = tsupport_segment("group");
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	struct shmet_seg_config g = {4, 1 << 16, 0, 0660, 0};
	assert_int_equal(shmet_segment_open(p, SHMET_ATTACH_CREATE, &g, &s, err), SHMET_OK);
	shmet_segment_close(&s);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0660);
}

static void test_segment_liveness_survives_other_close(void **state)
{
	(void)state;
	/* The liveness lock belongs to an open file description: closing some
	 * other descriptor of the same file (as any library might) keeps it. */
	const char *p = fresh("ofd");
	struct shmet_segment owner, other, reader;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(p, 0, NULL, &owner, err), SHMET_OK);
	uint32_t idx = 0;
	assert_int_equal(shmet_seg_claim(&owner.map, owner.map.fd, SHMET_NO_PARENT, &idx, err), SHMET_OK);
	assert_int_equal(shmet_segment_open(p, SHMET_ATTACH_READONLY, NULL, &other, err), SHMET_OK);
	shmet_segment_close(&other);
	assert_int_equal(shmet_segment_open(p, SHMET_ATTACH_READONLY, NULL, &reader, err), SHMET_OK);
	struct shmet_region_info info;
	shmet_region_info(&reader, idx, &info);
	assert_true(info.alive);
	shmet_segment_close(&owner); /* the owner's description goes: dead */
	shmet_region_info(&reader, idx, &info);
	assert_int_equal(info.state, SHMET_REGION_LIVE);
	assert_false(info.alive);
	shmet_segment_close(&reader);
}

static void test_segment_second_collector_locked_out(void **state)
{
	(void)state;
	const char *p = fresh("lock");
	struct shmet_segment a, b;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(p, 0, NULL, &a, err), SHMET_OK);
	assert_int_equal(shmet_segment_open(p, 0, NULL, &b, err), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&a, NULL), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&b, NULL), SHMET_E_LOCKED);
	shmet_segment_close(&a);
	assert_int_equal(shmet_segment_lock_collector(&b, NULL), SHMET_OK);
	shmet_segment_close(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_segment_created_private_and_valid),
		cmocka_unit_test(test_segment_wrong_magic_refused),
		cmocka_unit_test(test_segment_other_major_version_refused),
		cmocka_unit_test(test_segment_truncated_refused),
		cmocka_unit_test(test_segment_inconsistent_sizes_refused),
		cmocka_unit_test(test_segment_world_writable_refused),
		cmocka_unit_test(test_segment_symlink_refused),
		cmocka_unit_test(test_segment_group_mode_honoured),
		cmocka_unit_test(test_segment_fifo_directory_device_refused),
		cmocka_unit_test(test_segment_other_owner_refused_unless_allowed),
		cmocka_unit_test(test_segment_liveness_survives_other_close),
		cmocka_unit_test(test_segment_second_collector_locked_out),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
