/* The header-only writer's process-wide state, compiled once for the
 * collector (its push region) and the tests. */
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
