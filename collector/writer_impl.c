/* The header-only writer's process-wide state, compiled once for the
 * collector (its push region) and the tests. */
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"

#include "collector.h"

/* The writer's own mapping of the segment, for the SIGBUS guard. */
const struct shmet_seg_map *shmetd_writer_map(void)
{
	return shmet__st.map.base ? &shmet__st.map : NULL;
}
