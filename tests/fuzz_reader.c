/* libFuzzer target: libshm's reader, fold and the dump tool on hostile
 * segment bytes.
 *
 * A segment of fixed, valid geometry (4 regions of 8192 bytes, the one
 * `test_reader_hostile --make-seeds` writes seeds for) lives in a file under
 * /dev/shm (or $TMPDIR when /dev/shm is absent).  Each input is a list of
 * chunks written over a freshly initialised image of it:
 *
 *   u8 area | u16 offset | u16 length | length bytes         (little-endian;
 *                                                             a short tail is
 *                                                             used as it is)
 *   area % 10:  0-3  region i (8192 bytes)
 *               4-5  retired half h, its header included (20480 bytes)
 *               6    the region table (4 slots of 64 bytes)
 *               7    the segment header from byte 128 (counters, active half)
 *               8    liveness: bit i of the first byte says region i's owner
 *                    is alive (this process then holds its lock)
 *               9    the header's first 128 bytes (magic, version, geometry):
 *                    the segment is then opened afresh, and the opener must
 *                    refuse or accept it cleanly
 *
 * Then everything that reads a segment runs: shmet_snapshot_take, each
 * region's and retired half's directory walk with shmet_read_cells and
 * shmet_parse_family, the dump tool's text, JSON and --check output (to
 * /dev/null), and a fold of the dead regions followed by another snapshot
 * and shmet_free_folded.  Any crash, hang, leak or sanitizer report is a bug.
 *
 * Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined and
 * the libshm sources only (no collector library), -DSHMET_FUZZING.
 */
#include "shmetrics_reader.h"

/* The dump tool's reading and printing, with its main() renamed. */
#include "../tools/shmetrics-dump.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FZ_REGIONS 4
#define FZ_REGION_SIZE 8192

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fz_path[256];
static int fz_fd = -1;          /* read-write, carries the liveness locks */
static unsigned char *fz_map;   /* read-write mapping of the whole file */
static unsigned char *fz_image; /* the freshly created segment */
static size_t fz_size;
static struct shmet_segment fz_ro, fz_rw;
static FILE *fz_null;
static struct shmet_fold_result fz_fold;

static void fz_cleanup(void)
{
	if (fz_path[0])
		unlink(fz_path);
}

static void fz_die(const char *what, const char *why)
{
	fprintf(stderr, "fuzz_reader: %s: %s\n", what, why);
	exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(fz_path, sizeof fz_path, "%s/shmet-fuzz-%d", dir, (int)getpid());
	unlink(fz_path);
	atexit(fz_cleanup);
	char err[SHMET_ERRBUF];
	struct shmet_seg_config cfg = {FZ_REGIONS, FZ_REGION_SIZE, 0, 0, 0};
	struct shmet_segment made;
	if (shmet_segment_open(fz_path, SHMET_ATTACH_CREATE, &cfg, &made, err) != SHMET_OK)
		fz_die("create", err);
	fz_size = made.map.size;
	if (!(fz_image = malloc(fz_size)))
		fz_die("image", "out of memory");
	memcpy(fz_image, made.map.base, fz_size);
	shmet_segment_close(&made);
	if ((fz_fd = open(fz_path, O_RDWR | O_CLOEXEC)) < 0)
		fz_die("open", strerror(errno));
	fz_map = mmap(NULL, fz_size, PROT_READ | PROT_WRITE, MAP_SHARED, fz_fd, 0);
	if (fz_map == MAP_FAILED)
		fz_die("mmap", strerror(errno));
	if (shmet_segment_open(fz_path, SHMET_ATTACH_READONLY, NULL, &fz_ro, err) != SHMET_OK)
		fz_die("open read-only", err);
	if (shmet_segment_open(fz_path, 0, NULL, &fz_rw, err) != SHMET_OK)
		fz_die("open read-write", err);
	if (!(fz_null = fopen("/dev/null", "w")))
		fz_die("/dev/null", strerror(errno));
	return 0;
}

static void fz_lock(int fd, off_t off, short type)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = type;
	fl.l_whence = SEEK_SET;
	fl.l_start = off;
	fl.l_len = 1;
	fcntl(fd, F_OFD_SETLK, &fl);
}

/* Every reader entry point over one segment. */
static void fz_read_all(const struct shmet_segment *seg)
{
	struct shmet_snapshot snap;
	shmet_snapshot_take(seg, &snap);
	for (size_t i = 0; i < snap.nfamilies; i++) {
		const struct shmet_snap_family *f = &snap.families[i];
		if (f->nseries && shmet_snapshot_family(&snap, f->name) == NULL)
			abort();
		for (size_t j = 0; j < f->nseries; j++)
			(void)shmet_agg_value(&f->series[j].agg, f->type);
	}
	shmet_snapshot_free(&snap);

	char err[SHMET_ERRBUF];
	char *key = malloc(SHMET_SERIES_KEY_MAX);
	for (uint32_t i = 0; key && i < seg->regions + 2; i++) {
		struct shmet_area a;
		if (i < seg->regions) {
			struct shmet_region_info info;
			shmet_region_info(seg, i, &info);
			shmet_region_area(seg, i, &a, err);
		} else {
			shmet_retired_area(seg, i - seg->regions, &a, err);
			(void)shmet_retired_header(seg, i - seg->regions);
		}
		struct shmet_dir_iter it;
		struct shmet_record r;
		int rc;
		uint64_t steps = 0;
		shmet_dir_begin(&it, &a);
		while ((rc = shmet_dir_next(&it, &r, err)) != 0) {
			if (++steps > a.size) /* each record is >= 24 bytes: this cannot be a walk */
				abort();
			if (rc < 0)
				continue;
			if (r.kind == SHMET_REC_SERIES) {
				struct shmet_values v;
				shmet_read_cells(&a, &r.fam, &r.series, &v);
				struct shmet_family_view f;
				if (shmet_parse_family(&a, r.series.family_off, &f, err) != SHMET_OK ||
				    !shmet_family_same(&f, &r.fam))
					abort(); /* the walk just parsed it */
				(void)shmet_series_key(&r, key, SHMET_SERIES_KEY_MAX);
			}
		}
	}
	free(key);

	struct dump_opts o;
	memset(&o, 0, sizeof o);
	o.region = DUMP_ALL;
	dump_segment(seg, &o, fz_null);
	o.json = true;
	dump_segment(seg, &o, fz_null);
	o.json = false;
	o.check = true;
	dump_segment(seg, &o, fz_null);
	o.check = false;
	o.region = 0;
	o.family = "*_total";
	dump_segment(seg, &o, fz_null);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint64_t area_size[10] = {FZ_REGION_SIZE, FZ_REGION_SIZE, FZ_REGION_SIZE, FZ_REGION_SIZE,
					       0, 0, 64 * FZ_REGIONS, SHMET_PAGE - 128, 1, 128};
	uint64_t area_off[10], limit[10];
	memcpy(limit, area_size, sizeof limit);
	for (int i = 0; i < FZ_REGIONS; i++)
		area_off[i] = fz_ro.regions_off + (uint64_t)i * FZ_REGION_SIZE;
	area_off[4] = fz_ro.retired_off;
	area_off[5] = fz_ro.retired_off + fz_ro.retired_half_size;
	limit[4] = limit[5] = fz_ro.retired_half_size;
	area_off[6] = fz_ro.table_off;
	area_off[7] = 128;
	area_off[8] = 0; /* not in the file */
	area_off[9] = 0;

	memcpy(fz_map, fz_image, fz_size);
	unsigned alive = 0;
	bool header = false;
	size_t pos = 0;
	while (pos + 5 <= size) {
		unsigned area = data[pos] % 10;
		uint64_t off = (uint64_t)data[pos + 1] | (uint64_t)data[pos + 2] << 8;
		uint64_t len = (uint64_t)data[pos + 3] | (uint64_t)data[pos + 4] << 8;
		pos += 5;
		if (len > size - pos)
			len = size - pos;
		const uint8_t *p = data + pos;
		pos += len;
		if (area == 8) {
			if (len)
				alive = p[0];
			continue;
		}
		if (area == 9)
			header = true;
		if (off >= limit[area])
			continue;
		if (len > limit[area] - off)
			len = limit[area] - off;
		memcpy(fz_map + area_off[area] + off, p, len);
	}
	for (uint32_t i = 0; i < FZ_REGIONS; i++)
		fz_lock(fz_fd, (off_t)(fz_ro.table_off + 64ull * i), alive >> i & 1 ? F_WRLCK : F_UNLCK);

	if (header) {
		/* A magic of zero would make the opener wait for a creator. */
		uint64_t magic;
		memcpy(&magic, fz_map, 8);
		if (magic == 0)
			memcpy(fz_map, "\1\0\0\0\0\0\0\0", 8);
		struct shmet_segment seg;
		struct shmet_seg_config cfg = {0, 0, 0, 0, 1};
		char err[SHMET_ERRBUF];
		if (shmet_segment_open(fz_path, SHMET_ATTACH_READONLY, &cfg, &seg, err) == SHMET_OK) {
			fz_read_all(&seg);
			shmet_segment_close(&seg);
		}
		return 0;
	}

	fz_read_all(&fz_ro);
	/* What a collector does with it: fold, read the result, free. */
	fz_lock(fz_rw.map.fd, SHMET_COLLECTOR_LOCK_OFF, F_WRLCK);
	if (shmet_fold_dead(&fz_rw, &fz_fold) == SHMET_OK) {
		struct shmet_snapshot snap;
		shmet_snapshot_take(&fz_ro, &snap);
		shmet_snapshot_free(&snap);
		struct dump_opts o;
		memset(&o, 0, sizeof o);
		o.region = DUMP_ALL;
		o.check = true;
		dump_segment(&fz_ro, &o, fz_null);
		shmet_free_folded(&fz_rw, &fz_fold);
	}
	fz_lock(fz_rw.map.fd, SHMET_COLLECTOR_LOCK_OFF, F_UNLCK);
	return 0;
}
