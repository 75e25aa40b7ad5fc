/* libshm: opening a segment and looking at its regions. */
#include "shmetrics_reader.h"

#include <stdlib.h>

int shmet_segment_open(const char *path, int flags, const struct shmet_seg_config *cfg,
		       struct shmet_segment *seg, char *err)
{
	memset(seg, 0, sizeof *seg);
	if (!path)
		path = shmet_default_path();
	if (strlen(path) >= sizeof seg->path)
		return shmet__fail(err, SHMET_E_TOO_LONG, "segment path too long");
	int rc = shmet_seg_attach(path, cfg, flags, &seg->map, err);
	if (rc != SHMET_OK)
		return rc;
	strcpy(seg->path, path);
	/* The geometry the attach validated and kept, never the live header,
	 * which any worker may have rewritten since. */
	const struct shmet_seg_map *m = &seg->map;
	seg->regions = m->regions;
	seg->region_size = m->region_size;
	seg->regions_off = m->regions_off;
	seg->table_off = m->table_off;
	seg->retired_off = m->retired_off;
	seg->retired_half_size = m->retired_half_size;
	seg->retired_hdr_size = shmet_retired_header_size(seg->regions);
	seg->registry_off = m->registry_off;
	seg->registry_size = m->registry_size;
	/* Re-derive as a last check that everything lies inside the mapping. */
	struct shmet_seg_geometry g;
	shmet_seg_geometry(seg->regions, seg->region_size, seg->retired_half_size - seg->retired_hdr_size,
			   seg->registry_size, &g);
	if (g.total != seg->map.size || g.regions_off != seg->regions_off || g.retired_off != seg->retired_off ||
	    g.registry_off != seg->registry_off) {
		shmet_seg_detach(&seg->map);
		return shmet__fail(err, SHMET_E_CORRUPT, "%s: header changed while being opened", path);
	}
	return SHMET_OK;
}

void shmet_segment_close(struct shmet_segment *seg)
{
	shmet_seg_detach(&seg->map);
	memset(seg, 0, sizeof *seg);
	seg->map.fd = -1;
}

int shmet_segment_lock_collector(struct shmet_segment *seg, int *holder_pid)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = SHMET_COLLECTOR_LOCK_OFF;
	fl.l_len = 1;
	if (holder_pid)
		*holder_pid = 0;
	if (fcntl(seg->map.fd, F_OFD_SETLK, &fl) == 0)
		return SHMET_OK;
	if (errno != EAGAIN && errno != EACCES)
		return SHMET_E_SYS;
	/* OFD locks report l_pid as -1; a classic F_GETLK may name the holder. */
	if (holder_pid) {
		memset(&fl, 0, sizeof fl);
		fl.l_type = F_WRLCK;
		fl.l_whence = SEEK_SET;
		fl.l_start = SHMET_COLLECTOR_LOCK_OFF;
		fl.l_len = 1;
		if (fcntl(seg->map.fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
			*holder_pid = fl.l_pid;
	}
	return SHMET_E_LOCKED;
}

static const struct shmet_region_slot *slot_of(const struct shmet_segment *seg, uint32_t i)
{
	return (const struct shmet_region_slot *)(seg->map.base + seg->table_off + (uint64_t)i * SHMET_CACHELINE);
}

void shmet_region_info(const struct shmet_segment *seg, uint32_t i, struct shmet_region_info *info)
{
	memset(info, 0, sizeof *info);
	info->index = i;
	if (i >= seg->regions)
		return;
	const struct shmet_region_slot *s = slot_of(seg, i);
	/* acquire: pairs with the claimer's CAS, so the region header it
	 * initialised is visible. */
	uint64_t sg = __atomic_load_n(&s->rs_state_gen, __ATOMIC_ACQUIRE);
	info->state = shmet_state_of(sg);
	info->generation = shmet_gen_of(sg);
	info->pid = __atomic_load_n(&s->rs_pid, __ATOMIC_RELAXED);
	info->parent = __atomic_load_n(&s->rs_parent, __ATOMIC_RELAXED);
	info->claimed_ns = __atomic_load_n(&s->rs_claimed_ns, __ATOMIC_RELAXED);
	info->flags = __atomic_load_n(&s->rs_flags, __ATOMIC_RELAXED); /* informational, as the claimer wrote it */
	info->alive = info->state == SHMET_REGION_LIVE &&
		      shmet_seg_byte_locked(&seg->map, (off_t)(seg->table_off + (uint64_t)i * SHMET_CACHELINE)) == 1;
	const struct shmet_region_header *rg =
		(const struct shmet_region_header *)(seg->map.base + seg->regions_off + (uint64_t)i * seg->region_size);
	info->dir_end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	info->cell_low = __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
	info->dropped = __atomic_load_n(&rg->rg_dropped, __ATOMIC_RELAXED);
	info->series = __atomic_load_n(&rg->rg_series, __ATOMIC_RELAXED);
}

/* Read an area's header once and check it; an empty (never initialised)
 * area reads as having no records. */
static int area_from(const unsigned char *base, uint64_t size, struct shmet_area *a, char *err)
{
	const struct shmet_region_header *rg = (const struct shmet_region_header *)base;
	a->retired = false;
	a->base = base;
	a->size = size;
	/* acquire: pairs with the owner's release of rg_dir_end, so every record
	 * below it is complete. */
	a->dir_end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	a->cell_low = __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
	if (a->dir_end == 0) {
		a->dir_end = sizeof *rg;
		a->cell_low = size;
		return SHMET_OK;
	}
	if (a->dir_end < sizeof *rg || a->dir_end > size || a->dir_end % 8 || a->cell_low > size ||
	    a->cell_low < a->dir_end || a->cell_low % 8) {
		uint64_t d = a->dir_end, c = a->cell_low;
		a->dir_end = sizeof *rg;
		a->cell_low = size;
		return shmet__fail(err, SHMET_E_CORRUPT,
				   "area header out of bounds: dir_end %llu, cell_low %llu, size %llu",
				   (unsigned long long)d, (unsigned long long)c, (unsigned long long)size);
	}
	return SHMET_OK;
}

int shmet_region_area(const struct shmet_segment *seg, uint32_t i, struct shmet_area *a, char *err)
{
	if (i >= seg->regions)
		return shmet__fail(err, SHMET_E_INVALID_ARG, "no region %u", i);
	return area_from(seg->map.base + seg->regions_off + (uint64_t)i * seg->region_size, seg->region_size, a, err);
}

unsigned shmet_retired_active(const struct shmet_segment *seg)
{
	/* acquire: pairs with the folder's release flip, so the half it names
	 * is complete. */
	return (unsigned)(__atomic_load_n(&seg->map.hdr->sh_retired_active, __ATOMIC_ACQUIRE) & 1);
}

const struct shmet_retired_header *shmet_retired_header(const struct shmet_segment *seg, unsigned half)
{
	return (const struct shmet_retired_header *)(seg->map.base + seg->retired_off +
						     (uint64_t)(half & 1) * seg->retired_half_size);
}

int shmet_retired_area(const struct shmet_segment *seg, unsigned half, struct shmet_area *a, char *err)
{
	const unsigned char *base = (const unsigned char *)shmet_retired_header(seg, half) + seg->retired_hdr_size;
	int rc = area_from(base, seg->retired_half_size - seg->retired_hdr_size, a, err);
	a->retired = true;
	return rc;
}

int shmet_registry_area(const struct shmet_segment *seg, struct shmet_area *a, char *err)
{
	/* only the end means anything here: the registry has no cells, and
	 * its rg_cell_low (which a stray write may change) is never read */
	const struct shmet_region_header *rg = (const struct shmet_region_header *)(seg->map.base + seg->registry_off);
	a->retired = false;
	a->base = seg->map.base + seg->registry_off;
	a->size = a->cell_low = seg->registry_size;
	/* acquire: pairs with the registering writer's release of the end */
	a->dir_end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	if (a->dir_end < sizeof *rg || a->dir_end > a->size || a->dir_end % 8) {
		uint64_t d = a->dir_end;
		a->dir_end = sizeof *rg;
		return shmet__fail(err, SHMET_E_CORRUPT, "family registry end %llu out of bounds (size %llu)",
				   (unsigned long long)d, (unsigned long long)a->size);
	}
	return SHMET_OK;
}
