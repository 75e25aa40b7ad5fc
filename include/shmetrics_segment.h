/* shmetrics_segment.h — opening, creating and claiming the segment.
 *
 * Shared by the header-only writer and by libshm, so that both create,
 * validate and claim in exactly one way.  Every function is static inline:
 * a program that links libshm and also compiles the writer's implementation
 * gets two private copies of this code but no clashing symbols, and no
 * process-wide state lives here.
 *
 * Needs _GNU_SOURCE-level declarations only for constants that it defines
 * itself when missing (the F_OFD_* lock commands, Linux >= 3.15).
 *
 * Trust: whoever can open the file for writing can rewrite every byte and
 * can shrink the file.  So the opener accepts only a regular file owned by
 * its own uid, by one it names (shmet_seg_config.owner_uid), or (not for
 * root) shared with its group by mode; after attach it uses only the
 * geometry it validated (struct shmet_seg_map), never the header again.
 * Shrinking cannot be prevented: Linux seals (F_ADD_SEALS) exist for memfd
 * only, and a page mapped past the new end raises SIGBUS in whoever touches
 * it.  The collector survives that (collector.h); a writer does not, by
 * design of a header-only library that installs no signal handler: the
 * operator keeps the file private and restarts what died.
 */
#ifndef SHMETRICS_SEGMENT_H
#define SHMETRICS_SEGMENT_H

#include "shmetrics_layout.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef F_OFD_GETLK
#define F_OFD_GETLK 36
#define F_OFD_SETLK 37
#define F_OFD_SETLKW 38
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes: 0 or negative.  One table makes names and messages. */
#define SHMET_ERRNO_MAP(X)                                                               \
	X(OK, 0, "success")                                                                   \
	X(E_SYS, -1, "system call failed")                                                    \
	X(E_INVALID_ARG, -2, "invalid argument")                                              \
	X(E_INVALID_NAME, -3, "invalid metric name")                                          \
	X(E_INVALID_LABEL, -4, "invalid label name")                                          \
	X(E_RESERVED_LABEL, -5, "reserved label name")                                        \
	X(E_DUPLICATE_LABEL, -6, "duplicate label name")                                      \
	X(E_INVALID_UTF8, -7, "text is not valid UTF-8")                                      \
	X(E_TYPE_CLASH, -8, "a different family with this name exists")                      \
	X(E_LABEL_COUNT, -9, "wrong number of label values")                                  \
	X(E_SEGMENT_FULL, -10, "no free region in the segment")                               \
	X(E_REGION_FULL, -11, "the process's region is full")                                 \
	X(E_NO_SPACE, -12, "no space left to reserve the segment's pages")                    \
	X(E_NOT_SEGMENT, -13, "not a shmetrics segment")                                      \
	X(E_VERSION, -14, "segment has an incompatible layout version")                       \
	X(E_CORRUPT, -15, "segment is truncated or inconsistent")                             \
	X(E_PERMISSION, -16, "segment refused: unsafe owner, mode or file type")              \
	X(E_TIMEOUT, -17, "segment was never initialised by its creator")                     \
	X(E_NOT_INIT, -18, "shmetrics is not initialised")                                    \
	X(E_LOCKED, -19, "another collector holds the segment")                               \
	X(E_TOO_LONG, -20, "text exceeds its length limit")                                   \
	X(E_BUCKETS, -21, "invalid histogram buckets")                                       \
	X(E_REGISTRY_FULL, -22, "the segment's family registry is full")                    \
	X(E_BUSY, -23, "another thread was writing the exemplar slot; this exemplar was dropped")

enum shmet_error {
#define SHMET__ERR_ENUM(name, code, msg) SHMET_##name = code,
	SHMET_ERRNO_MAP(SHMET__ERR_ENUM)
#undef SHMET__ERR_ENUM
};

static inline const char *shmet_strerror(int code)
{
	switch (code) {
#define SHMET__ERR_MSG(name, c, msg)                                                    \
	case c:                                                                            \
		return msg;
		SHMET_ERRNO_MAP(SHMET__ERR_MSG)
#undef SHMET__ERR_MSG
	}
	return "unknown error";
}

#define SHMET_ERRBUF 256

/* Capacity asked for when the segment is created (ignored when it exists). */
struct shmet_seg_config {
	uint32_t regions;      /* 0: SHMET_DEFAULT_REGIONS */
	uint64_t region_size;  /* 0: SHMET_DEFAULT_REGION_SIZE */
	uint64_t retired_size; /* bytes per retired half's area; 0: 2 * region_size */
	unsigned mode;         /* 0: 0600; 0660 shares with the group */
	int wait_ms;           /* how long a late opener waits for the creator; 0: 2000 */
	uint64_t registry_size; /* bytes of the family registry; 0: SHMET_DEFAULT_REGISTRY_SIZE */
	/* An existing segment must be owned by our effective uid, or (for an
	 * opener that is not root) be shared with our group by its mode.
	 * allow_owner != 0 also accepts one owned by owner_uid; nothing else
	 * does, not even for root. */
	int allow_owner;
	uid_t owner_uid;
	/* set_group != 0: a segment this call creates gets group `group`
	 * (the creator must be a member, or root) */
	int set_group;
	gid_t group;
	uint32_t series_limit; /* sh_series_limit of a segment this call creates (0: 2000) */
};

enum shmet_attach_flags {
	SHMET_ATTACH_CREATE = 1,   /* create when absent */
	SHMET_ATTACH_READONLY = 2, /* map read-only; never write (dump tool) */
};

struct shmet_seg_map {
	int fd;
	int readonly;
	int created;
	unsigned char *base;
	uint64_t size;
	struct shmet_seg_header *hdr;
	/* Geometry validated once at attach (computed, when creating) and kept
	 * in private memory: every worker can rewrite the header, so nothing
	 * after attach reads its sizes or offsets again.  The accessors below
	 * use only these. */
	uint32_t regions;
	uint64_t region_size;
	uint64_t table_off;
	uint64_t regions_off;
	uint64_t retired_off;
	uint64_t retired_half_size;
	uint64_t registry_off;
	uint64_t registry_size;
};

static inline void shmet__seg_keep(struct shmet_seg_map *m, uint32_t regions, uint64_t region_size,
				   uint64_t table_off, uint64_t regions_off, uint64_t retired_off,
				   uint64_t retired_half_size, uint64_t registry_off, uint64_t registry_size)
{
	m->registry_off = registry_off;
	m->registry_size = registry_size;
	m->regions = regions;
	m->region_size = region_size;
	m->table_off = table_off;
	m->regions_off = regions_off;
	m->retired_off = retired_off;
	m->retired_half_size = retired_half_size;
}

static inline int shmet__fail(char *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline int shmet__fail(char *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, SHMET_ERRBUF, fmt, ap);
		va_end(ap);
	}
	return code;
}

static inline uint64_t shmet__now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The writer's way to accept a segment owned by another user (the
 * collector and the dump tool have --segment-owner UID instead). */
#define SHMET_ENV_SEGMENT_OWNER "SHMETRICS_SEGMENT_OWNER"

/* Parse a numeric uid for cfg->owner_uid: 0 ok, -1 not a uid. */
static inline int shmet_parse_uid(const char *s, uid_t *uid)
{
	unsigned long long v = 0;
	if (!s || !*s)
		return -1;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9' || v > 0xffffffffull / 10)
			return -1;
		v = v * 10 + (unsigned)(*p - '0');
	}
	if (v >= 0xffffffffull) /* (uid_t)-1 means "no uid" to the kernel */
		return -1;
	*uid = (uid_t)v;
	return 0;
}

/* Sharing the segment with a group: the creator's mode and group, given
 * to the collector as --segment-mode/--segment-group and to writers as
 * shmet_options or these variables. */
#define SHMET_ENV_SEGMENT_MODE "SHMETRICS_SEGMENT_MODE"
#define SHMET_ENV_SEGMENT_GROUP "SHMETRICS_SEGMENT_GROUP"

/* "0600", "600", "0640" or "0660" (octal; nothing for other users). */
/* $SHMETRICS_SERIES_LIMIT, the default series limit of a segment its
 * process creates: *out := 1..UINT32_MAX, or 0 when unset.  -1: invalid. */
static inline int shmet_env_series_limit(uint32_t *out)
{
	const char *s = getenv(SHMET_ENV_SERIES_LIMIT);
	char *end;
	*out = 0;
	if (!s || !*s)
		return 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*end || *s == '-' || v == 0 || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static inline int shmet_parse_mode(const char *s, unsigned *mode)
{
	unsigned v = 0;
	if (!s || !*s || strlen(s) > 4)
		return -1;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '7')
			return -1;
		v = v * 8 + (unsigned)(*p - '0');
	}
	if ((v & 0600) != 0600 || (v & 07117)) /* the owner reads and writes; no execute, no others, no setuid */
		return -1;
	*mode = v;
	return 0;
}

/* A group name or a numeric gid. */
static inline int shmet_parse_group(const char *s, gid_t *gid)
{
	uid_t v;
	if (shmet_parse_uid(s, &v) == 0) {
		*gid = (gid_t)v;
		return 0;
	}
	struct group gr, *res = NULL;
	char buf[4096];
	if (!s || getgrnam_r(s, &gr, buf, sizeof buf, &res) != 0 || !res)
		return -1;
	*gid = res->gr_gid;
	return 0;
}

static inline const char *shmet_default_path(void)
{
	const char *p = getenv(SHMET_ENV_SEGMENT);
	return p && *p ? p : SHMET_DEFAULT_PATH;
}

/* Where each part of a segment of this shape lives.  Computed, never read,
 * so a header that disagrees with its own sizes is caught. */
struct shmet_seg_geometry {
	uint64_t table_off, registry_off, registry_size, regions_off, retired_off, retired_half_size, total;
};

static inline void shmet_seg_geometry(uint32_t regions, uint64_t region_size, uint64_t retired_area,
				      uint64_t registry_size, struct shmet_seg_geometry *g)
{
	uint64_t table = (uint64_t)regions * SHMET_CACHELINE;
	g->table_off = SHMET_PAGE;
	g->registry_off = g->table_off + (table + SHMET_PAGE - 1) / SHMET_PAGE * SHMET_PAGE;
	g->registry_size = registry_size;
	g->regions_off = g->registry_off + registry_size;
	g->retired_off = g->regions_off + (uint64_t)regions * region_size;
	g->retired_half_size = shmet_retired_header_size(regions) + retired_area;
	g->total = g->retired_off + 2 * g->retired_half_size;
}

/* Validate a header against the file it came from.  Reads each field once. */
static inline int shmet_seg_validate(const struct shmet_seg_header *h, uint64_t file_size,
				     char *err)
{
	uint64_t magic = __atomic_load_n(&h->sh_magic, __ATOMIC_ACQUIRE);
	if (magic != SHMET_MAGIC)
		return shmet__fail(err, SHMET_E_NOT_SEGMENT, "bad magic 0x%016llx: not a shmetrics segment",
				   (unsigned long long)magic);
	if (h->sh_version_major != SHMET_VERSION_MAJOR)
		return shmet__fail(err, SHMET_E_VERSION,
				   "segment layout version %u.%u, this build reads %u.x",
				   h->sh_version_major, h->sh_version_minor, SHMET_VERSION_MAJOR);
	if (h->sh_signature != SHMET_SIGNATURE)
		return shmet__fail(err, SHMET_E_VERSION,
				   "segment layout signature 0x%08x differs from this build's 0x%08x",
				   h->sh_signature, (unsigned)SHMET_SIGNATURE);
	uint32_t n = h->sh_region_count;
	uint64_t rs = h->sh_region_size;
	if (n == 0 || n > SHMET_MAX_REGIONS || rs < SHMET_MIN_REGION_SIZE || rs > SHMET_MAX_REGION_SIZE ||
	    rs % SHMET_PAGE)
		return shmet__fail(err, SHMET_E_CORRUPT, "implausible capacity: %u regions of %llu bytes",
				   n, (unsigned long long)rs);
	uint64_t half = h->sh_retired_half_size, hdr = shmet_retired_header_size(n);
	if (half <= hdr || half - hdr < SHMET_MIN_REGION_SIZE || half - hdr > 4 * SHMET_MAX_REGION_SIZE ||
	    half % SHMET_PAGE)
		return shmet__fail(err, SHMET_E_CORRUPT, "implausible retired area of %llu bytes",
				   (unsigned long long)half);
	uint64_t reg = h->sh_registry_size;
	if (reg < SHMET_MIN_REGISTRY_SIZE || reg > SHMET_MAX_REGISTRY_SIZE || reg % SHMET_PAGE)
		return shmet__fail(err, SHMET_E_CORRUPT, "implausible family registry of %llu bytes",
				   (unsigned long long)reg);
	struct shmet_seg_geometry g;
	shmet_seg_geometry(n, rs, half - hdr, reg, &g);
	if (h->sh_region_table_off != g.table_off || h->sh_registry_off != g.registry_off ||
	    h->sh_regions_off != g.regions_off ||
	    h->sh_retired_off != g.retired_off || h->sh_total_size != g.total)
		return shmet__fail(err, SHMET_E_CORRUPT, "header offsets disagree with its sizes");
	if (file_size < g.total)
		return shmet__fail(err, SHMET_E_CORRUPT, "file is truncated: %llu bytes, header says %llu",
				   (unsigned long long)file_size, (unsigned long long)g.total);
	return SHMET_OK;
}

static inline int shmet__init_segment(int fd, const struct shmet_seg_config *cfg, unsigned mode,
				      struct shmet_seg_map *m, char *err)
{
	uint32_t n = cfg && cfg->regions ? cfg->regions : SHMET_DEFAULT_REGIONS;
	uint64_t rs = cfg && cfg->region_size ? cfg->region_size : SHMET_DEFAULT_REGION_SIZE;
	rs = (rs + SHMET_PAGE - 1) / SHMET_PAGE * SHMET_PAGE;
	uint64_t ra = cfg && cfg->retired_size ? cfg->retired_size : 2 * rs;
	ra = (ra + SHMET_PAGE - 1) / SHMET_PAGE * SHMET_PAGE;
	uint64_t reg = cfg && cfg->registry_size ? cfg->registry_size : SHMET_DEFAULT_REGISTRY_SIZE;
	reg = (reg + SHMET_PAGE - 1) / SHMET_PAGE * SHMET_PAGE;
	if (reg < SHMET_MIN_REGISTRY_SIZE || reg > SHMET_MAX_REGISTRY_SIZE)
		return shmet__fail(err, SHMET_E_INVALID_ARG, "family registry of %llu bytes out of range (%llu..%llu)",
				   (unsigned long long)reg, (unsigned long long)SHMET_MIN_REGISTRY_SIZE,
				   (unsigned long long)SHMET_MAX_REGISTRY_SIZE);
	if (n == 0 || n > SHMET_MAX_REGIONS || rs < SHMET_MIN_REGION_SIZE || rs > SHMET_MAX_REGION_SIZE ||
	    ra < SHMET_MIN_REGION_SIZE || ra > 4 * SHMET_MAX_REGION_SIZE)
		return shmet__fail(err, SHMET_E_INVALID_ARG,
				   "capacity out of range: %u regions (1..%u) of %llu bytes (%llu..%llu)", n,
				   SHMET_MAX_REGIONS, (unsigned long long)rs,
				   (unsigned long long)SHMET_MIN_REGION_SIZE,
				   (unsigned long long)SHMET_MAX_REGION_SIZE);
	struct shmet_seg_geometry g;
	shmet_seg_geometry(n, rs, ra, reg, &g);
	if (cfg && cfg->set_group && fchown(fd, (uid_t)-1, cfg->group) != 0)
		return shmet__fail(err, SHMET_E_PERMISSION, "cannot give the new segment group %u: %s (the creator must "
				   "belong to it)", (unsigned)cfg->group, strerror(errno));
	if (fchmod(fd, mode) != 0 || ftruncate(fd, (off_t)g.total) != 0)
		return shmet__fail(err, SHMET_E_SYS, "cannot size the new segment: %s", strerror(errno));
	/* The header, table and retired halves are written by the creator and
	 * the collector; reserve them now so that a full tmpfs is an error here
	 * and not a SIGBUS later.  Regions are reserved when claimed. */
	int rc = posix_fallocate(fd, 0, (off_t)g.regions_off);
	if (rc == 0)
		rc = posix_fallocate(fd, (off_t)g.retired_off, (off_t)(2 * g.retired_half_size));
	if (rc != 0)
		return shmet__fail(err, rc == ENOSPC ? SHMET_E_NO_SPACE : SHMET_E_SYS,
				   "cannot reserve %llu bytes for the segment: %s",
				   (unsigned long long)(g.regions_off + 2 * g.retired_half_size), strerror(rc));
	void *p = mmap(NULL, g.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return shmet__fail(err, SHMET_E_SYS, "cannot map the new segment: %s", strerror(errno));
	struct shmet_seg_header *h = (struct shmet_seg_header *)p;
	h->sh_version_major = SHMET_VERSION_MAJOR;
	h->sh_version_minor = SHMET_VERSION_MINOR;
	h->sh_signature = SHMET_SIGNATURE;
	h->sh_region_count = n;
	h->sh_region_size = rs;
	h->sh_region_table_off = g.table_off;
	h->sh_registry_off = g.registry_off;
	h->sh_registry_size = g.registry_size;
	h->sh_regions_off = g.regions_off;
	h->sh_retired_off = g.retired_off;
	h->sh_retired_half_size = g.retired_half_size;
	h->sh_total_size = g.total;
	h->sh_created_ns = shmet__now_ns(CLOCK_REALTIME);
	h->sh_creator_pid = (uint32_t)getpid();
	h->sh_mode = mode;
	h->sh_series_limit = cfg ? cfg->series_limit : 0;
	{
		/* the registry: a region-format area without cells */
		struct shmet_region_header *rr = (struct shmet_region_header *)((unsigned char *)p + g.registry_off);
		rr->rg_cell_low = g.registry_size;
		rr->rg_dir_end = sizeof *rr;
	}
	for (int half = 0; half < 2; half++) {
		unsigned char *area = (unsigned char *)p + g.retired_off +
				      (uint64_t)half * g.retired_half_size + shmet_retired_header_size(n);
		struct shmet_region_header *rg = (struct shmet_region_header *)area;
		rg->rg_cell_low = ra;
		rg->rg_dir_end = sizeof(struct shmet_region_header);
	}
	/* Publish last: an opener that sees the magic sees every field above. */
	__atomic_store_n(&h->sh_magic, SHMET_MAGIC, __ATOMIC_RELEASE);
	m->base = (unsigned char *)p;
	m->size = g.total;
	m->hdr = h;
	shmet__seg_keep(m, n, rs, g.table_off, g.regions_off, g.retired_off, g.retired_half_size, g.registry_off,
			g.registry_size);
	return SHMET_OK;
}

/* What a file that is not a regular file is, for the message refusing it. */
static inline const char *shmet__file_kind(mode_t mode)
{
	if (S_ISFIFO(mode))
		return "a FIFO";
	if (S_ISDIR(mode))
		return "a directory";
	if (S_ISCHR(mode))
		return "a character device";
	if (S_ISBLK(mode))
		return "a block device";
	if (S_ISSOCK(mode))
		return "a socket";
	if (S_ISLNK(mode))
		return "a symbolic link";
	return "a special file";
}

/* Open (and, with SHMET_ATTACH_CREATE, create) the segment at path and map it.
 * On failure returns a negative code, leaves *m closed and writes a reason
 * into err (SHMET_ERRBUF bytes). */
static inline int shmet_seg_attach(const char *path, const struct shmet_seg_config *cfg, int flags,
				   struct shmet_seg_map *m, char *err)
{
	memset(m, 0, sizeof *m);
	m->fd = -1;
	if (!path)
		path = shmet_default_path();
	int ro = (flags & SHMET_ATTACH_READONLY) != 0;
	unsigned mode = cfg && cfg->mode ? cfg->mode : 0600;
	if (mode & 0007)
		return shmet__fail(err, SHMET_E_INVALID_ARG, "mode %04o: other users may not have access", mode);
	int fd = -1, created = 0;
	struct stat st;
	for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
		if (!ro && (flags & SHMET_ATTACH_CREATE)) {
			fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
			if (fd >= 0) {
				created = 1;
				break;
			}
			if (errno != EEXIST)
				break;
		}
		/* Only a regular file is opened: opening a FIFO for reading blocks
		 * until a writer comes, and opening a device can act on it.  lstat
		 * first, then O_NONBLOCK in case it was swapped meanwhile (fstat
		 * below decides). */
		if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
			return shmet__fail(err, SHMET_E_PERMISSION, "%s is %s, not a regular file; refused", path,
					   shmet__file_kind(st.st_mode));
		fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 && !(errno == ENOENT && (flags & SHMET_ATTACH_CREATE)))
			break; /* ENOENT with CREATE: it was removed meanwhile; try again */
	}
	if (fd < 0) {
		int e = errno;
		if (e == ELOOP)
			return shmet__fail(err, SHMET_E_PERMISSION, "%s is a symbolic link; refused", path);
		return shmet__fail(err, SHMET_E_SYS, "cannot open %s: %s", path, strerror(e));
	}
	if (!created) {
		int fl = fcntl(fd, F_GETFL);
		if (fl >= 0)
			fcntl(fd, F_SETFL, fl & ~O_NONBLOCK); /* a regular file's I/O never blocks anyway */
	}
	m->fd = fd;
	m->readonly = ro;
	m->created = created;
	int rc, wait_ms;
	char why[SHMET_ERRBUF];
	void *hp, *p; /* declared before the first goto: C++ may not jump past an initialisation */
	struct shmet_seg_header hcopy;
	if (created) {
		rc = shmet__init_segment(fd, cfg, mode, m, why);
		if (rc != SHMET_OK) {
			unlink(path); /* nobody can have attached: the magic was never published */
			goto fail;
		}
		return SHMET_OK;
	}
	if (fstat(fd, &st) != 0) {
		rc = shmet__fail(why, SHMET_E_SYS, "fstat: %s", strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = shmet__fail(why, SHMET_E_PERMISSION, "%s, not a regular file; refused", shmet__file_kind(st.st_mode));
		goto fail;
	}
	if (st.st_mode & S_IWOTH) {
		rc = shmet__fail(why, SHMET_E_PERMISSION, "world-writable (mode %04o); refused",
				 (unsigned)(st.st_mode & 07777));
		goto fail;
	}
	/* Whoever owns the segment can rewrite every byte of it, and so read,
	 * forge or break our metrics: accept our own, one the caller names, or
	 * (not for root) one shared with our group by its mode.  Root is not
	 * exempt: it would trust any user's file. */
	if (st.st_uid != geteuid() && !(cfg && cfg->allow_owner && st.st_uid == cfg->owner_uid) &&
	    (geteuid() == 0 || !(st.st_gid == getegid() && (st.st_mode & 0060)))) {
		rc = shmet__fail(why, SHMET_E_PERMISSION,
				 "owned by uid %u, not by us (uid %u)%s; refused (allow that owner explicitly)",
				 (unsigned)st.st_uid, (unsigned)geteuid(),
				 geteuid() == 0 ? "" : " and not shared with our group");
		goto fail;
	}
	/* The creator sizes the file, initialises it and publishes the magic
	 * last; wait for that, bounded. */
	wait_ms = cfg && cfg->wait_ms ? cfg->wait_ms : 2000;
	for (int waited = 0;; waited++) {
		if (fstat(fd, &st) != 0) {
			rc = shmet__fail(why, SHMET_E_SYS, "fstat: %s", strerror(errno));
			goto fail;
		}
		if ((uint64_t)st.st_size >= sizeof(struct shmet_seg_header)) {
			uint64_t magic = 0;
			if (pread(fd, &magic, sizeof magic, 0) == (ssize_t)sizeof magic && magic == SHMET_MAGIC)
				break;
			if (magic != 0 && magic != SHMET_MAGIC) {
				rc = shmet__fail(why, SHMET_E_NOT_SEGMENT,
						 "bad magic 0x%016llx: not a shmetrics segment",
						 (unsigned long long)magic);
				goto fail;
			}
		}
		if (waited >= wait_ms) {
			rc = shmet__fail(why, SHMET_E_TIMEOUT,
					 "no initialised segment after %d ms (%lld bytes; creator died or not a segment)",
					 wait_ms, (long long)st.st_size);
			goto fail;
		}
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	hp = mmap(NULL, sizeof(struct shmet_seg_header), PROT_READ, MAP_SHARED, fd, 0);
	if (hp == MAP_FAILED) {
		rc = shmet__fail(why, SHMET_E_SYS, "mmap: %s", strerror(errno));
		goto fail;
	}
	memcpy(&hcopy, hp, sizeof hcopy);
	munmap(hp, sizeof(struct shmet_seg_header));
	rc = shmet_seg_validate(&hcopy, (uint64_t)st.st_size, why);
	if (rc != SHMET_OK)
		goto fail;
	p = mmap(NULL, hcopy.sh_total_size, ro ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = shmet__fail(why, SHMET_E_SYS, "mmap %llu bytes: %s",
				 (unsigned long long)hcopy.sh_total_size, strerror(errno));
		goto fail;
	}
	m->base = (unsigned char *)p;
	m->size = hcopy.sh_total_size;
	m->hdr = (struct shmet_seg_header *)p;
	shmet__seg_keep(m, hcopy.sh_region_count, hcopy.sh_region_size, hcopy.sh_region_table_off,
			hcopy.sh_regions_off, hcopy.sh_retired_off, hcopy.sh_retired_half_size, hcopy.sh_registry_off,
			hcopy.sh_registry_size);
	/* A hostile writer could change the header after our validation; every
	 * later reader uses m->size and its own copy of the geometry, so check
	 * the mapped one matches what we validated once more. */
	if (memcmp(m->hdr, &hcopy, offsetof(struct shmet_seg_header, sh_reserved0)) != 0) {
		munmap(p, hcopy.sh_total_size);
		m->base = NULL;
		rc = shmet__fail(why, SHMET_E_CORRUPT, "header changed while being opened");
		goto fail;
	}
	return SHMET_OK;
fail:
	close(fd);
	m->fd = -1;
	return shmet__fail(err, rc, "%s: %s", path, why);
}

static inline void shmet_seg_detach(struct shmet_seg_map *m)
{
	if (m->base)
		munmap(m->base, m->size);
	if (m->fd >= 0)
		close(m->fd);
	memset(m, 0, sizeof *m);
	m->fd = -1;
}

/* The accessors use the geometry kept at attach, never the live header.
 * i must be below shmet_seg_regions(m). */
static inline uint32_t shmet_seg_regions(const struct shmet_seg_map *m)
{
	return m->regions;
}

static inline struct shmet_region_slot *shmet_seg_slot(const struct shmet_seg_map *m, uint32_t i)
{
	return (struct shmet_region_slot *)(m->base + m->table_off + (uint64_t)i * SHMET_CACHELINE);
}

static inline unsigned char *shmet_seg_region(const struct shmet_seg_map *m, uint32_t i)
{
	return m->base + m->regions_off + (uint64_t)i * m->region_size;
}

static inline off_t shmet_seg_lock_off(const struct shmet_seg_map *m, uint32_t i)
{
	return (off_t)(m->table_off + (uint64_t)i * SHMET_CACHELINE);
}

/* One byte of the header that only a collector (the folder) locks. */
#define SHMET_COLLECTOR_LOCK_OFF 8

static inline int shmet__ofd_lock(int fd, off_t off, short type, int cmd)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = type;
	fl.l_whence = SEEK_SET;
	fl.l_start = off;
	fl.l_len = 1;
	return fcntl(fd, cmd, &fl);
}

/* 1: someone holds the byte's write lock (through any open file description,
 * in any process, including this one); 0: nobody; -1: error. */
static inline int shmet_seg_byte_locked(const struct shmet_seg_map *m, off_t off)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_RDLCK; /* conflicts only with a write lock; allowed on read-only fds */
	fl.l_whence = SEEK_SET;
	fl.l_start = off;
	fl.l_len = 1;
	if (fcntl(m->fd, F_OFD_GETLK, &fl) != 0)
		return -1;
	return fl.l_type != F_UNLCK;
}

/* Is region i owned by a running process? */
static inline int shmet_seg_region_alive(const struct shmet_seg_map *m, uint32_t i)
{
	return shmet_seg_byte_locked(m, shmet_seg_lock_off(m, i)) == 1;
}

/* Claim a free region for the calling process and reserve its pages.
 * lock_fd is the descriptor whose open file description will carry the
 * liveness lock: it must stay open for as long as the region is owned. */
static inline int shmet_seg_claim(const struct shmet_seg_map *m, int lock_fd, uint32_t parent,
				  uint32_t *index, char *err)
{
	uint32_t n = shmet_seg_regions(m);
	uint64_t rs = m->region_size;
	for (uint32_t i = 0; i < n; i++) {
		struct shmet_region_slot *slot = shmet_seg_slot(m, i);
		int rc; /* declared before the gotos: C++ may not jump past an initialisation */
		uint64_t want;
		struct shmet_region_header *rg;
		/* acquire: pairs with the folder's release when it frees the slot,
		 * so the region's pages are already punched back to zero. */
		uint64_t sg = __atomic_load_n(&slot->rs_state_gen, __ATOMIC_ACQUIRE);
		if (shmet_state_of(sg) != SHMET_REGION_FREE)
			continue;
		/* Lock first: from now on a LIVE state with our lock is alive, and
		 * if we die before the CAS the slot is still FREE. */
		if (shmet__ofd_lock(lock_fd, shmet_seg_lock_off(m, i), F_WRLCK, F_OFD_SETLK) != 0)
			continue; /* another process is claiming it */
		sg = __atomic_load_n(&slot->rs_state_gen, __ATOMIC_ACQUIRE);
		if (shmet_state_of(sg) != SHMET_REGION_FREE)
			goto next;
		rc = posix_fallocate(m->fd, (off_t)(m->regions_off + (uint64_t)i * rs), (off_t)rs);
		if (rc != 0) {
			shmet__ofd_lock(lock_fd, shmet_seg_lock_off(m, i), F_UNLCK, F_OFD_SETLK);
			__atomic_fetch_add(&m->hdr->sh_claim_failures, 1, __ATOMIC_RELAXED);
			return shmet__fail(err, rc == ENOSPC ? SHMET_E_NO_SPACE : SHMET_E_SYS,
					   "cannot reserve %llu bytes for region %u: %s",
					   (unsigned long long)rs, i, strerror(rc));
		}
		want = shmet_state_gen(shmet_gen_of(sg) + 1, SHMET_REGION_LIVE);
		/* acq_rel: acquire the freed region's zeroed pages, release our
		 * claim so that readers who see LIVE see a consistent slot. */
		if (!__atomic_compare_exchange_n(&slot->rs_state_gen, &sg, want, 0, __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE))
			goto next;
		rg = (struct shmet_region_header *)shmet_seg_region(m, i);
		__atomic_store_n(&rg->rg_cell_low, rs, __ATOMIC_RELAXED);
		__atomic_store_n(&rg->rg_dir_end, (uint64_t)sizeof *rg, __ATOMIC_RELEASE);
		__atomic_store_n(&slot->rs_pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
		__atomic_store_n(&slot->rs_flags, 0u, __ATOMIC_RELAXED); /* informational until the owner dies */
		__atomic_store_n(&slot->rs_parent, parent, __ATOMIC_RELAXED);
		__atomic_store_n(&slot->rs_claimed_ns, shmet__now_ns(CLOCK_REALTIME), __ATOMIC_RELAXED);
		*index = i;
		return SHMET_OK;
	next:
		shmet__ofd_lock(lock_fd, shmet_seg_lock_off(m, i), F_UNLCK, F_OFD_SETLK);
	}
	__atomic_fetch_add(&m->hdr->sh_claim_failures, 1, __ATOMIC_RELAXED);
	return shmet__fail(err, SHMET_E_SEGMENT_FULL, "all %u regions are in use", n);
}

#ifdef __cplusplus
}
#endif
#endif /* SHMETRICS_SEGMENT_H */
