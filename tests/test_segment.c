/* Opening segments: what is refused, and why. */
#include "tsupport.h"

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
		cmocka_unit_test(test_segment_liveness_survives_other_close),
		cmocka_unit_test(test_segment_second_collector_locked_out),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
