/* shmetrics_layout.h — the shared-memory segment, byte by byte.
 *
 * This header is the single description of the segment that the header-only
 * writer (shmetrics.h), libshm, the collector and the dump tool share.  All
 * integers are native-endian (the segment never leaves the machine); all
 * offsets are in bytes.  Multi-byte fields are naturally aligned.
 *
 *  file offset
 *  0 ─────────────── segment header (struct shmet_seg_header, one page)
 *  4096 ──────────── region table: region_count slots of 64 bytes
 *  registry_off ──── family registry (registry_size bytes, page aligned)
 *  regions_off ───── region 0 | region 1 | ... (region_size bytes each, page aligned)
 *  retired_off ───── retired half 0 | retired half 1 (retired_half_size each)
 *
 * SEGMENT HEADER (immutable after the magic is published, except where noted)
 *  OFF  SIZE FIELD                WRITER                     READER / ORDER
 *    0    8  sh_magic             creator, LAST, release     openers, acquire
 *    8    4  sh_version_major     creator                    after magic
 *   12    4  sh_version_minor     creator                    after magic
 *   16    4  sh_signature         creator                    after magic
 *   20    4  sh_region_count      creator                    after magic
 *   24    8  sh_region_size       creator                    after magic
 *   32    8  sh_region_table_off  creator                    after magic
 *   40    8  sh_regions_off       creator                    after magic
 *   48    8  sh_retired_off       creator                    after magic
 *   56    8  sh_retired_half_size creator                    after magic
 *   64    8  sh_total_size        creator                    after magic
 *   72    8  sh_created_ns        creator (CLOCK_REALTIME)   informational
 *   80    4  sh_creator_pid       creator                    informational
 *   84    4  sh_mode              creator (file mode bits)   informational
 *   88    8  sh_registry_off      creator                    after magic
 *   96    8  sh_registry_size     creator                    after magic
 *  104   24  (reserved, zero)
 *  128    8  sh_claim_failures    any process, relaxed add   collector, relaxed
 *  136    8  sh_dropped_orphan    any process, relaxed add   collector, relaxed
 *  144    8  sh_retired_active    folder only, release store collector, acquire
 *  152    8  sh_registrations_refused
 *                                 any process, relaxed add   collector, relaxed
 *  160    4  sh_series_limit      creator (0: 2000)          attachers, once, after magic
 *  164  ...  (reserved, zero, to 3968)
 * 3968    4  sh_collector_pid     the collector holding the  another collector,
 *                                 collector lock, relaxed    relaxed; informational
 * 3972    4  (reserved, zero)
 * 3976  120  sh_collector_addr    that collector, before     another collector: a
 *                                 sh_collector_pid; NUL-     copy, printable bytes
 *                                 terminated text            only; informational
 *
 *  sh_registrations_refused counts registrations the family registry refused
 *  (a clashing shape or sample name, or a full registry).
 *  sh_series_limit is the segment's default series limit per family and
 *  process (SERIES LIMIT below); a family's registration may set its own.
 *  sh_claim_failures counts processes that found no free region (or no tmpfs
 *  space) when they claimed; sh_dropped_orphan counts writes dropped by a
 *  process that has no region.  sh_retired_active is the index (0 or 1) of
 *  the retired half that holds the current totals of dead workers.
 *
 * REGION TABLE SLOT (64 bytes, one cache line, at region_table_off + i*64)
 *  OFF  SIZE FIELD           WRITER                          READER / ORDER
 *    0    8  rs_state_gen    claimer CAS FREE->LIVE (acq_rel) everyone, acquire
 *                            folder  CAS LIVE->FREE (release)
 *    8    4  rs_pid          claimer after its CAS, relaxed   informational
 *   12    4  rs_parent       claimer: region index of the parent at fork, or
 *                            SHMET_NO_PARENT                  informational
 *   16    8  rs_claimed_ns   claimer, relaxed                 informational
 *   24    4  rs_flags        claimer, relaxed; SHMET_SLOT_COLLECTOR: a collector's push region,
 *                            SHMET_SLOT_THREAD: one thread's cells (WRITING THREADS),
 *                            SHMET_SLOT_HISTORY: a collector's dashboard history
 *   28   36  (reserved)
 *  rs_state_gen = generation << 8 | state.  The generation grows by one at each
 *  claim, so (region, generation) names one owner for ever.
 *  Liveness: the owner holds an open-file-description write lock
 *  (F_OFD_SETLK) on the first byte of its slot.  The kernel drops it with the
 *  last reference to that description, which is the owner's death (kill -9
 *  included) as long as nobody else holds one; closing some other descriptor
 *  of the file does not drop it (unlike a classic POSIX lock).  A descriptor
 *  and a MAP_SHARED mapping made from it are both references, and fork
 *  copies both: a fork child must close its inherited descriptor and replace
 *  its inherited mapping (the writer opens the file again and maps it over
 *  the old mapping with MAP_FIXED), or it keeps its parent "live" until the
 *  child exits.  A LIVE slot whose byte is not locked belongs to a dead owner.
 *
 * FAMILY REGISTRY (registry_size bytes at registry_off): a region-format
 * area without cells (a 64-byte region header, then FAMILY records, the
 * same bytes as in a region's directory).  It decides each family's shape
 * once for the whole segment:
 *  - A writer registering a family takes the registry lock (an OFD write
 *    lock on header byte SHMET_REGISTRY_LOCK_OFF, bounded wait), walks the
 *    records, and either finds the name with the same shape (type, gauge
 *    mode, label names, buckets; help is not part of the shape and the first
 *    help wins), finds a clash (the same name with another shape, or any
 *    sample name in common: x, x_total, x_bucket, x_sum, x_count, x_created,
 *    and a counter's family name without _total) and refuses, or appends its
 *    record and publishes rg_dir_end with a release store.
 *  - Readers acquire rg_dir_end, copy and validate each record once, and
 *    trust only that copy: a region's series counts only when its FAMILY
 *    record has the registry's shape for its name.  A record that arrives
 *    later with a clashing name (only a hostile writer can put one there) is
 *    ignored and counted.  Scan order never decides a shape.
 *  Records are never changed or removed while the segment exists, so a
 *  shape outlives every process that used it: a deploy that changes a
 *  family's shape needs a new family name, or a new segment.
 *
 * REGION (region_size bytes at regions_off + i*region_size); only its owner
 * (a process, or one thread of it: see WRITING THREADS) writes it.  A region starts with a 64-byte header; the directory grows up
 * from byte 64, the value cells grow down from region_size.
 *  OFF  SIZE FIELD           WRITER                          READER / ORDER
 *    0    8  rg_dir_end      owner, release after a record    readers, acquire
 *    8    8  rg_cell_low     owner, relaxed, before dir_end   readers, after dir_end
 *   16    8  rg_dropped      owner's threads, relaxed add     readers, relaxed
 *   24    8  rg_series       owner, relaxed                   informational
 *   32   32  (reserved)
 *
 * WRITING THREADS: one writer per cell.  A counter, histogram or summary
 * cell has exactly one writing thread, so an update is a relaxed load and
 * a relaxed store of that thread's own cell: no locked read-modify-write.
 *  - The thread that claims a process's region (at init, or a fork child's
 *    first write) is its home thread: it writes that region's counter,
 *    histogram and summary cells.  A single-threaded process (a pre-fork
 *    worker) has that one region and nothing more.
 *  - Any other thread of the process, at its first such write, claims a
 *    region of its own like any claimer (rs_parent = the process's region,
 *    rs_flags |= SHMET_SLOT_THREAD), copies the process's directory into it
 *    and publishes it (release store of rg_dir_end).  Every later FAMILY or
 *    SERIES record is written, under the process's registration mutex, into
 *    the process's region and into each of its threads' regions at the same
 *    offset, so a handle (an offset) names the same series in all of them
 *    and a reader treats a thread's region as it treats a process's.
 *  - Gauge cells are one value per process: every thread sets them in the
 *    process's region (a relaxed store, CAS loop for add).  Their copies in
 *    a thread's region stay zero and unset (stamp 0), which sum, max, min
 *    and most-recent already ignore or lose with; per-worker gauges show
 *    a thread region as a worker that never set the gauge.
 *  - A thread that exits (its pthread key destructor) takes its region off
 *    the mirror list, then releases the region's liveness lock: from then
 *    on nothing in the process writes it, and the collector folds it as a
 *    dead process's region (values into the retired totals, then free).
 *    The home thread's exit hands the process's counter cells to the next
 *    thread that writes (under the mutex, which orders the two writers).
 *    A process that dies releases every lock at once.  Liveness, folding,
 *    exactness and monotonicity are the rules for regions, unchanged.
 *  Why a relaxed store is enough for the reader: the cell has one writer,
 *  so no update can be lost between its load and its store; the reader
 *  needs each cell's value, not an order between cells (as with fetch_add
 *  before), and an aligned 8-byte store is never seen torn.  A reader that
 *  folds a region has seen it dead: its owner's last stores precede the
 *  unlock (or the exit) that the kernel's lock state reports, as with a
 *  process's death.  Cost: one region per writing thread (size the segment
 *  for workers x threads), and a scan reads each thread's copy of the
 *  directory.  A thread that finds no free region drops its counter,
 *  histogram and summary writes, counted in rg_dropped of its process's
 *  region and said once on stderr, and claims again about once a second.
 *
 * DIRECTORY RECORD: an 8-byte header then a body; rec_size covers both and is
 * a multiple of 8.  Records are written below rg_dir_end first, then
 * rg_dir_end is advanced with a release store, so a reader that acquires
 * rg_dir_end sees complete records only.  Records never change once published.
 *  header:  u32 rec_size | u16 rec_kind | u16 rec_flags(0)
 *  FAMILY (kind 1), 16-byte fixed part then variable part
 *  (fam_gauge_mode of a counter or histogram: 1 when it keeps exemplars):
 *    u8 fam_type | u8 fam_gauge_mode | u16 fam_nlabels | u32 fam_nbuckets |
 *    u16 fam_name_len | u16 fam_help_len | u32 fam_sketch_len
 *    double bounds[fam_nbuckets] (histogram upper bounds, strictly increasing,
 *    finite; +Inf is implied), name, help, then per label name: u16 len, bytes,
 *    then (fam_sketch_len bytes, the record's last) a SKETCH block.
 *  SKETCH block (summaries with quantiles, native histograms; 0 bytes
 *  without), 32 + 8*nobj (native histograms: nobj, age and max age 0):
 *    i32 sk_schema (-4..8) | i32 sk_first (index of the first bucket) |
 *    u32 sk_count (buckets, 1..SHMET_MAX_SKETCH_BUCKETS) |
 *    u16 sk_nobjectives | u16 sk_age_buckets | u64 sk_max_age_ns |
 *    double sk_zero_threshold (summaries 0) | double objectives[sk_nobjectives]
 *    (strictly increasing, in (0, 1)).  Bucket i holds (g^(i-1), g^i] with
 *    g = 2^(2^-schema): the native-histogram schema, and DDSketch with that
 *    gamma, whose estimate 2g^i/(g+1) is within (g-1)/(g+1) of every value
 *    in the bucket.  The block is part of the family's shape.
 *  SERIES (kind 2), 16-byte fixed part then variable part:
 *    u32 ser_family_off (offset of an earlier FAMILY record in this region) |
 *    u32 ser_cell_off | u16 ser_nvalues (== fam_nlabels) | u16 (zero) |
 *    u32 ser_folded_s (zero in a region; in a retired half, the time of the
 *    last fold that added to the series, CLOCK_REALTIME seconds)
 *    per label value: u16 len, bytes (valid UTF-8).
 *  rec_flags of a SERIES: SHMET_SER_OVERFLOW marks a family's overflow
 *  series (every value SHMET_OVERFLOW_VALUE); readers use the flag for
 *  reports only, the values are what make it one series across processes;
 *  a fold keeps it on the retired series it creates.
 *  SHMET_SER_BASELINE (retired halves only) marks a removal's baseline:
 *  its cells are what the series held when it was removed, and readers
 *  subtract them (REMOVAL below).
 *  REMOVE (kind 3, the family registry only), 24-byte fixed part:
 *    u32 rec_size | u16 kind | u16 rec_flags (SHMET_REMOVE_FAMILY: every
 *    series of the family) | u32 rm_family_off (its FAMILY record in the
 *    registry) | u16 rm_nvalues (fam_nlabels, or 0 with SHMET_REMOVE_FAMILY)
 *    | u16 (zero) | u64 rm_stamp_ns (CLOCK_REALTIME, informational)
 *    then per label value: u16 len, bytes.
 *
 * REMOVAL.  shmet_series_remove / shmet_family_clear append a REMOVE record
 * to the registry; no cell changes (each has one writer, and it is not the
 * remover).  The folder applies removals in registry order when it writes
 * the inactive retired half: for each series they name, it drops the
 * series' retired totals and any earlier baseline, and writes a BASELINE
 * record whose cells are the exact sum of every region that counts now
 * (live, or dead and not folded yet); then it sets rh_removals_end to the
 * registry end it applied and flips.  A reader shows a series as the sum
 * of its cells minus its baseline (integer parts and buckets subtract,
 * floats exactly), and not at all while nothing was added since (a
 * gauge: while its value is the one it had at removal).  A region of the
 * baseline that dies later folds into the retired totals as any other, so
 * the difference stays exactly what was written after the removal: the
 * series starts afresh, as in a client library, and never goes down.
 * Writes between the call and the fold that applies it (a scan interval)
 * count towards the removed series.  Per-worker gauges are not removable
 * (they leave with their process).
 *
 * RETENTION.  A retired series records the last fold that added to it
 * (ser_folded_s).  With shmetricsd --retired-ttl, the folder drops from
 * the inactive half every series no region holds whose ser_folded_s is
 * that old, with its cells, and flips: the series ends (it is not reset:
 * it leaves the exposition), and its space is reused.
 *
 * SERIES LIMIT.  A process holds at most `limit` series of a family with
 * labels (the registration's series_limit, else sh_series_limit, else
 * 2000; inherited series of a fork child and a thread's mirrored directory
 * count as the process's).  A lookup of a new label set beyond it gets the
 * family's overflow series instead, whose label values are all
 * SHMET_OVERFLOW_VALUE: every write still counts, merged into that series.
 * Each such lookup adds one to the writer-made counter
 * SHMET_OVERFLOW_FAMILY{family="<name>"}, an ordinary counter family of the
 * segment (folded and exact like any other) that the collector shows as
 * its own.  The limit is per process: N processes that meet different label
 * sets can hold up to N x limit series of a family between them.
 *
 * VALUE CELLS (8-byte aligned, inside [rg_cell_low, region_size)):
 *  counter:   u64 whole increments | double fractional part, each a
 *             relaxed load and relaxed store by its one writing thread;
 *             value = whole + fractional.
 *  gauge:     double value (relaxed store / CAS add) | u64 stamp: in
 *             SHMET_GAUGE_MOSTRECENT mode the set time in ns (CLOCK_REALTIME),
 *             in MAX and MIN mode the SET MARK below, otherwise 0.
 *  SET MARK (2.3): a MAX (MIN) gauge's cell in its process's region is
 *             made with value -Inf (+Inf) and stamp 1, by the writer that
 *             creates the series and by a fork child for every series of
 *             the directory it copies, before the record (directory) is
 *             published.  A set is then one store of the value, as for a
 *             sum gauge.  A process takes part in the max (min) when its
 *             stamp is 1 and its value is not -Inf (+Inf): a process that
 *             never set it holds the one value a max (min) ignores anyway,
 *             so a series every process left unset, or set to exactly that
 *             value, is not shown.  An add to a cell still holding -Inf
 *             (+Inf) adds to 0.  A stamp of 0 (a thread's region, a cell
 *             before 2.3) takes no part, as before.
 *  histogram: u64 count per bucket, non-cumulative, nbuckets + 1 (+Inf last) |
 *             double sum (one writing thread, as a counter's).  _count is
 *             the sum of the buckets.  A native one (SKETCH block) then has,
 *             after the retired sum components, sk_count + 2 u64 counts: the
 *             zero bucket (|v| <= threshold), the sk_count positive buckets
 *             (values past either end of the window counted in its end
 *             bucket), then every v < -threshold (exposed as one negative
 *             bucket at the window's top index).  Same writer and orders as a
 *             summary's sketch; the classic bucket is counted first.
 *  summary:   u64 count | double sum (one writing thread).  With a SKETCH
 *             block, then (after the two lower sum components in a retired
 *             half) sk_count + 2 u64 counts: below the window (v <=
 *             g^(sk_first-1), zero, negative), the sk_count buckets, above it
 *             (+Inf too).  Only added to, by the one writing thread (relaxed
 *             load and store); readers load them relaxed, sum them over
 *             regions and the retired half (saturating) and subtract a
 *             window's start (shmetricsd keeps those snapshots).  count is
 *             written before the bucket: a reader may see it one observation
 *             ahead, never behind.
 *  exemplars: a counter or histogram registered with them has, after all of
 *             the above (live regions only: a fold drops them), one SLOT per
 *             series (counter) or per classic bucket (histogram, +Inf last)
 *             of SHMET_EXEMPLAR_WORDS u64: seq | value (double) | timestamp
 *             (double seconds, 0: none) | stamp (CLOCK_REALTIME ns of the
 *             write: the latest across processes wins) | len | len bytes of
 *             "name\0value\0" pairs (at most 128 UTF-8 characters in all).
 *             A seqlock: its one writer (the thread whose cells they are)
 *             makes seq odd, or finding it odd (a write that never finished)
 *             drops its exemplar rather than wait; then it stores the words
 *             with release stores and seq + 1 with a release store.
 *             Readers acquire seq, copy the words with acquire loads, and
 *             keep the copy only when seq read again is the same even value
 *             (bounded retries), then validate it.  (No fences: sanitizers
 *             do not model them; on x86 these are plain moves.)
 *  In a retired half, the cells of a counter, histogram or summary carry two
 *  more doubles after these (shmet_retired_cell_size): the float value
 *  (counter fractional part, _sum) is there the exact sum c0 + c1 + c2 of
 *  everything folded, as a non-overlapping expansion.
 *
 * EXACT FLOAT TOTALS.  A counter's value, and a histogram's or summary's
 * _sum, is a sum of doubles held in many places: each live or dead region's
 * cell and the retired expansion.  Floating addition is not associative, so
 * a reader that added them one by one would expose a value that depends on
 * how many regions were folded, and in which order (152.70000000000002 ->
 * 152.7 at a fold is a counter reset to Prometheus).  Instead:
 *  - the reader sums every part exactly (Shewchuk's expansions, as
 *    Python's math.fsum; integer parts split into two exact doubles) and
 *    rounds once to the nearest double: the exposed value is RN(S), where S
 *    is the exact sum of every cell that holds this series;
 *  - a fold replaces a dead region's cells by adding them exactly to the
 *    retired expansion: S is unchanged, so RN(S) is unchanged, bit for bit;
 *  - between scrapes every cell of a counter only grows (a writer adds
 *    non-negative values, rounding to nearest keeps RN(a + v) >= a), so S
 *    grows and RN, monotone, never goes down; a region's reuse starts from
 *    zero only after its values are in the expansion.
 *  Three components hold S exactly whenever it spans at most 159 bits
 *  (for instance adds of 1e-9 up to totals of 1e23); a fold that would need
 *  more keeps the nearest 159 bits and is counted as inexact
 *  (shmetricsd_folds_inexact_total), so the loss is never silent.
 *  Whole parts (u64) add with saturation, never wrapping.
 *
 * RETIRED HALF (retired_half_size bytes at retired_off + h*retired_half_size):
 *  a header of rh_size bytes (page aligned) then one region-format area that
 *  holds the totals of folded (dead) workers.
 *  OFF  SIZE FIELD              meaning
 *    0    8  rh_folds           regions folded into this half, in total
 *    8    8  rh_dropped         rg_dropped of every folded region, summed
 *   16    8  rh_removals_end    registry bytes whose REMOVE records this half applied
 *   24    8  rh_expired         series dropped by RETENTION, in total
 *   32   32  (reserved)
 *   64  8*N  rh_folded_gen[N]   for region i, the generation whose values this
 *                               half includes (0: none)
 *  Only the folder (the process holding the collector lock) writes a half,
 *  and only the inactive one; it then flips sh_retired_active with a release
 *  store.  A reader adds a region's cells only when the active half does not
 *  already include that (region, generation).
 *
 * DASHBOARD HISTORY: a region the collector claims for itself and flags
 * SHMET_SLOT_HISTORY in rs_flags.  Its directory stays empty (rg_dir_end 64,
 * rg_cell_low region_size), so readers find no series in it; the bytes from
 * SHMET_HISTORY_OFF hold the dashboard's recent frames, so that a restarted
 * collector keeps them.  Only the collector that holds the region's liveness
 * lock writes it, from one thread; the only reader is a later collector,
 * after that owner died, which takes the region back before its first fold
 * (the fold would otherwise free it).  Any worker can write these bytes
 * too: the reader copies each slot, checks every field, the crc32 of the
 * compressed bytes and the JSON inside, and keeps only what passes.
 *  history header (64 bytes at SHMET_HISTORY_OFF)
 *  OFF  SIZE FIELD          WRITER                         READER / ORDER
 *    0    8  hh_magic       owner, release, after the slots   later collector, copied
 *                           are zeroed ("SHMHIST1")
 *    8    4  hh_slot_size   owner (SHMET_HISTORY_SLOT_SIZE)   checked against the constant
 *   12    4  hh_slots       owner ((region_size - SHMET_HISTORY_SLOTS_OFF) / slot size)
 *                                                          checked against our geometry
 *   16    8  hh_next        owner, relaxed: the slot written next   where appends resume
 *   24   40  (reserved, zero)
 *  slot k (SHMET_HISTORY_SLOT_SIZE bytes at SHMET_HISTORY_SLOTS_OFF + k * size)
 *    0    8  hs_id          owner: relaxed 0, then the bytes below, then the
 *                           frame's id with release (0: empty)  acquire, then copied
 *    8    8  hs_unix_ms     frame time, CLOCK_REALTIME ms
 *   16    4  hs_len         zlib bytes after the 32-byte slot header
 *   20    4  hs_raw_len     the JSON's length (<= SHMET_HISTORY_RAW_MAX)
 *   24    4  hs_crc         crc32 of the zlib bytes
 *   28    4  hs_zero
 *  A slot holds one frame (the JSON the stream sends; without its per-family
 *  part when the whole does not fit).  Slots are reused in turn.
 */
#ifndef SHMETRICS_LAYOUT_H
#define SHMETRICS_LAYOUT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMET_MAGIC          UINT64_C(0x43495254454d4853) /* "SHMETRIC" little-endian */
#define SHMET_VERSION_MAJOR  2u
#define SHMET_VERSION_MINOR  3u
#define SHMET_CACHELINE      64u
#define SHMET_PAGE           4096u
#define SHMET_NO_PARENT      UINT32_C(0xffffffff)

#define SHMET_DEFAULT_PATH         "/dev/shm/shmetrics"
#define SHMET_ENV_SEGMENT          "SHMETRICS_SEGMENT"
#define SHMET_DEFAULT_REGIONS      64u
#define SHMET_DEFAULT_REGION_SIZE  (UINT64_C(1) << 20)
#define SHMET_MAX_REGIONS          4096u
#define SHMET_MIN_REGION_SIZE      UINT64_C(8192)
#define SHMET_MAX_REGION_SIZE      (UINT64_C(1) << 31)
#define SHMET_DEFAULT_REGISTRY_SIZE (UINT64_C(256) << 10)
#define SHMET_MIN_REGISTRY_SIZE    UINT64_C(4096)
#define SHMET_MAX_REGISTRY_SIZE    (UINT64_C(64) << 20)
/* Header bytes that serve as OFD lock targets (never written as data). */
#define SHMET_REGISTRY_LOCK_OFF    16
/* The collector's own metrics: refused at registration. */
#define SHMET_RESERVED_PREFIX      "shmetricsd_"
/* SERIES LIMIT: the default, "no limit", the overflow series' label value,
 * its SERIES flag, and the counter of lookups routed to it (the one family
 * with the reserved prefix that writers make, themselves). */
#define SHMET_SERIES_LIMIT_DEFAULT 2000u
#define SHMET_SERIES_UNLIMITED     UINT32_MAX
#define SHMET_ENV_SERIES_LIMIT     "SHMETRICS_SERIES_LIMIT"
#define SHMET_OVERFLOW_VALUE       "__overflow__"
#define SHMET_SER_OVERFLOW         1u
#define SHMET_OVERFLOW_FAMILY      "shmetricsd_series_overflow_total"

/* Limits a registration must respect; the reader enforces them too. */
#define SHMET_MAX_SKETCH_BUCKETS 4096u
#define SHMET_MAX_OBJECTIVES   16u
#define SHMET_MAX_AGE_BUCKETS  60u
#define SHMET_SKETCH_MIN_SCHEMA (-4)
#define SHMET_SKETCH_MAX_SCHEMA 8
/* bucket indexes stay well inside int32 arithmetic (a double's exponent
 * range at schema 8 is about +-2^18) */
#define SHMET_SKETCH_INDEX_LIMIT (1 << 20)
#define SHMET_SKETCH_REC_MAX (32u + 8u * SHMET_MAX_OBJECTIVES)
#define SHMET_EXEMPLAR_RUNES 128u
#define SHMET_EXEMPLAR_BYTES 512u /* 128 characters of at most 4 bytes, names and values */
#define SHMET_EXEMPLAR_WORDS (5u + SHMET_EXEMPLAR_BYTES / 8u)
#define SHMET_MAX_NAME_LEN     200u
#define SHMET_MAX_HELP_LEN     1024u
#define SHMET_MAX_LABELS       16u
#define SHMET_MAX_BUCKETS      128u
#define SHMET_MAX_VALUE_LEN    1024u
/* A counter cell of whole increments stops at 2^63 (its one writer
 * saturates there); readers still take min(cell, SHMET_COUNTER_WHOLE_MAX),
 * since the cell's bytes are a writer's, not theirs.  The largest single
 * increment is 2^53, the integers a double holds exactly. */
#define SHMET_COUNTER_WHOLE_MAX (UINT64_C(1) << 63)
#define SHMET_COUNTER_ADD_MAX   (UINT64_C(1) << 53)

/* The largest records a writer makes within these limits.  A reader copies
 * a record into private memory before it validates it (a worker may change
 * the bytes between a check and a later use), so a larger one is corrupt. */
#define SHMET_FAMILY_REC_MAX                                                                        \
	(((sizeof(struct shmet_rec_family) + 8u * SHMET_MAX_BUCKETS + SHMET_MAX_NAME_LEN + SHMET_MAX_HELP_LEN + \
	   SHMET_MAX_LABELS * (2u + SHMET_MAX_NAME_LEN) + 7u) & ~(size_t)7) + SHMET_SKETCH_REC_MAX)
#define SHMET_SERIES_REC_MAX \
	((sizeof(struct shmet_rec_series) + SHMET_MAX_LABELS * (2u + SHMET_MAX_VALUE_LEN) + 7u) & ~(size_t)7)
/* A registry record: a FAMILY, or a REMOVE (as large as a SERIES). */
#define SHMET_REGISTRY_REC_MAX \
	(SHMET_FAMILY_REC_MAX > SHMET_SERIES_REC_MAX ? SHMET_FAMILY_REC_MAX : SHMET_SERIES_REC_MAX)

enum shmet_type {
	SHMET_COUNTER = 1,
	SHMET_GAUGE = 2,
	SHMET_HISTOGRAM = 3,
	SHMET_SUMMARY = 4,
};

/* How the collector combines one gauge series across processes. */
enum shmet_gauge_mode {
	SHMET_GAUGE_SUM = 0,        /* live processes summed; dead ones dropped */
	SHMET_GAUGE_MAX = 1,        /* live setters; NaN only if all are NaN */
	SHMET_GAUGE_MIN = 2,        /* likewise */
	SHMET_GAUGE_MOSTRECENT = 3, /* last set wins, dead processes included */
	SHMET_GAUGE_PER_WORKER = 4, /* one series per region: label worker="<i>" */
};

enum shmet_region_state { SHMET_REGION_FREE = 0, SHMET_REGION_LIVE = 1 };

enum shmet_rec_kind { SHMET_REC_FAMILY = 1, SHMET_REC_SERIES = 2, SHMET_REC_REMOVE = 3 };
/* rec_flags of a REMOVE record: the whole family */
#define SHMET_REMOVE_FAMILY 1u
/* rec_flags of a SERIES in a retired half: a removal's baseline */
#define SHMET_SER_BASELINE 2u

struct shmet_seg_header {
	uint64_t sh_magic;
	uint32_t sh_version_major;
	uint32_t sh_version_minor;
	uint32_t sh_signature;
	uint32_t sh_region_count;
	uint64_t sh_region_size;
	uint64_t sh_region_table_off;
	uint64_t sh_regions_off;
	uint64_t sh_retired_off;
	uint64_t sh_retired_half_size;
	uint64_t sh_total_size;
	uint64_t sh_created_ns;
	uint32_t sh_creator_pid;
	uint32_t sh_mode;
	uint64_t sh_registry_off;
	uint64_t sh_registry_size;
	uint8_t sh_reserved0[24];
	uint64_t sh_claim_failures;
	uint64_t sh_dropped_orphan;
	uint64_t sh_retired_active;
	uint64_t sh_registrations_refused;
	uint32_t sh_series_limit;
	uint8_t sh_reserved1[SHMET_PAGE - 164 - 128];
	uint32_t sh_collector_pid;
	uint32_t sh_reserved2;
	char sh_collector_addr[120];
};

struct shmet_region_slot {
	uint64_t rs_state_gen;
	uint32_t rs_pid;
	uint32_t rs_parent;
	uint64_t rs_claimed_ns;
	uint32_t rs_flags;
	uint8_t rs_reserved[36];
};

/* rs_flags: the region holds a collector's pushed series; a collector that
 * holds the collector lock takes it back when its owner died, unfolded.
 * The claim and the folder's free clear the flags. */
#define SHMET_SLOT_COLLECTOR 1u
/* rs_flags: the region holds the cells of one thread of the process that
 * owns region rs_parent (see WRITING THREADS); informational. */
#define SHMET_SLOT_THREAD 2u
/* rs_flags: the region holds a collector's dashboard history (DASHBOARD
 * HISTORY above), not series. */
#define SHMET_SLOT_HISTORY 4u

#define SHMET_HISTORY_MAGIC      UINT64_C(0x31545349484d4853) /* "SHMHIST1" little-endian */
#define SHMET_HISTORY_OFF        64u
#define SHMET_HISTORY_SLOTS_OFF  128u
#define SHMET_HISTORY_SLOT_SIZE  4096u
#define SHMET_HISTORY_RAW_MAX    (256u << 10)

struct shmet_history_header {
	uint64_t hh_magic;
	uint32_t hh_slot_size;
	uint32_t hh_slots;
	uint64_t hh_next;
	uint8_t hh_reserved[40];
};

struct shmet_history_slot {
	uint64_t hs_id;
	uint64_t hs_unix_ms;
	uint32_t hs_len;
	uint32_t hs_raw_len;
	uint32_t hs_crc;
	uint32_t hs_zero;
};


struct shmet_region_header {
	uint64_t rg_dir_end;
	uint64_t rg_cell_low;
	uint64_t rg_dropped;
	uint64_t rg_series;
	uint8_t rg_reserved[32];
};

struct shmet_retired_header {
	uint64_t rh_folds;
	uint64_t rh_dropped;
	uint64_t rh_removals_end;
	uint64_t rh_expired;
	uint8_t rh_reserved[32];
	uint64_t rh_folded_gen[]; /* sh_region_count entries */
};

struct shmet_rec_header {
	uint32_t rec_size;
	uint16_t rec_kind;
	uint16_t rec_flags;
};

struct shmet_rec_family {
	struct shmet_rec_header fam_rec;
	uint8_t fam_type;
	uint8_t fam_gauge_mode;
	uint16_t fam_nlabels;
	uint32_t fam_nbuckets;
	uint16_t fam_name_len;
	uint16_t fam_help_len;
	uint32_t fam_sketch_len; /* bytes of the SKETCH block ending the record; 0: none */
	/* double bounds[fam_nbuckets]; name; help; label names */
};

struct shmet_rec_remove {
	struct shmet_rec_header rm_rec;
	uint32_t rm_family_off;
	uint16_t rm_nvalues;
	uint16_t rm_zero16;
	uint64_t rm_stamp_ns;
	/* per value: u16 len, bytes */
};

struct shmet_rec_series {
	struct shmet_rec_header ser_rec;
	uint32_t ser_family_off;
	uint32_t ser_cell_off;
	uint16_t ser_nvalues;
	uint16_t ser_zero16;
	uint32_t ser_folded_s; /* retired halves only: see SERIES */
	/* per value: u16 len, bytes */
};

#define SHMET_LAYOUT_ASSERT(c, m) _Static_assert(c, m)
#ifdef __cplusplus
#undef SHMET_LAYOUT_ASSERT
#define SHMET_LAYOUT_ASSERT(c, m) static_assert(c, m)
#endif
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_seg_header) == SHMET_PAGE, "header is one page");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_claim_failures) == 128, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_retired_active) == 144, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_total_size) == 64, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_registry_off) == 88, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_registry_size) == 96, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_registrations_refused) == 152, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_series_limit) == 160, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_collector_pid) == 3968, "layout table");
SHMET_LAYOUT_ASSERT(offsetof(struct shmet_seg_header, sh_collector_addr) == 3976, "layout table");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_region_slot) == SHMET_CACHELINE, "slot is a cache line");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_region_header) == 64, "region header");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_retired_header) == 64, "retired header");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_history_header) == SHMET_HISTORY_SLOTS_OFF - SHMET_HISTORY_OFF, "history header");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_history_slot) == 32, "history slot header");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_rec_family) == 24, "family record fixed part");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_rec_series) == 24, "series record fixed part");
SHMET_LAYOUT_ASSERT(sizeof(struct shmet_rec_remove) == 24, "remove record fixed part");

/* The signature folds the sizes a build depends on, so two builds that
 * disagree on the layout refuse to share a file instead of misreading it. */
#define SHMET_SIGNATURE                                                             \
	((uint32_t)(SHMET_VERSION_MAJOR << 24) ^ (uint32_t)(SHMET_CACHELINE << 16) ^   \
	 (uint32_t)(sizeof(struct shmet_region_slot) << 8) ^                            \
	 (uint32_t)sizeof(struct shmet_region_header) ^                                 \
	 (uint32_t)(sizeof(struct shmet_rec_family) << 4) ^                             \
	 (uint32_t)(sizeof(struct shmet_rec_series) << 12) ^ (uint32_t)sizeof(double))

static inline uint64_t shmet_state_gen(uint64_t gen, unsigned state)
{
	return gen << 8 | state;
}
static inline unsigned shmet_state_of(uint64_t sg) { return (unsigned)(sg & 0xff); }
static inline uint64_t shmet_gen_of(uint64_t sg) { return sg >> 8; }

/* ---- log-bucket sketches (SKETCH block, summary cells) ---- */

/* A SKETCH block, decoded; count == 0: the family has none. */
struct shmet_sketch {
	int32_t schema, first;
	uint32_t count;
	uint32_t nobjectives, age_buckets;
	uint64_t max_age_ns;
	double zero_threshold;
	double objectives[SHMET_MAX_OBJECTIVES];
};

/* Decode and check a SKETCH block p of sketch_len bytes: 1 when it is one
 * a writer makes for a family of this type, else 0.  sketch_len 0 decodes
 * as "no sketch". */
static inline int shmet_sketch_decode(const unsigned char *p, uint32_t sketch_len, unsigned type,
				      struct shmet_sketch *sk)
{
	memset(sk, 0, sizeof *sk);
	if (sketch_len == 0)
		return 1;
	if ((type != SHMET_SUMMARY && type != SHMET_HISTOGRAM) || sketch_len % 8 || sketch_len < 32 ||
	    sketch_len > SHMET_SKETCH_REC_MAX)
		return 0;
	uint16_t nobj, age;
	memcpy(&sk->schema, p, 4);
	memcpy(&sk->first, p + 4, 4);
	memcpy(&sk->count, p + 8, 4);
	memcpy(&nobj, p + 12, 2);
	memcpy(&age, p + 14, 2);
	memcpy(&sk->max_age_ns, p + 16, 8);
	memcpy(&sk->zero_threshold, p + 24, 8);
	sk->nobjectives = nobj;
	sk->age_buckets = age;
	if (sk->schema < SHMET_SKETCH_MIN_SCHEMA || sk->schema > SHMET_SKETCH_MAX_SCHEMA || sk->count == 0 ||
	    sk->count > SHMET_MAX_SKETCH_BUCKETS || sk->first < -SHMET_SKETCH_INDEX_LIMIT ||
	    sk->first > SHMET_SKETCH_INDEX_LIMIT)
		return 0;
	if (type == SHMET_HISTOGRAM) /* native: a zero bucket, no objectives, no window */
		return sketch_len == 32 && nobj == 0 && age == 0 && sk->max_age_ns == 0 && sk->zero_threshold >= 0 &&
		       sk->zero_threshold < 1e300;
	if (nobj == 0 || nobj > SHMET_MAX_OBJECTIVES ||
	    sketch_len != 32u + 8u * nobj || age == 0 || age > SHMET_MAX_AGE_BUCKETS ||
	    sk->max_age_ns < UINT64_C(1000000000) || sk->max_age_ns > UINT64_C(86400000000000) * 7 ||
	    sk->zero_threshold != 0)
		return 0;
	for (uint32_t i = 0; i < nobj; i++) {
		memcpy(&sk->objectives[i], p + 32 + 8 * i, 8);
		if (!(sk->objectives[i] > 0 && sk->objectives[i] < 1) || (i && !(sk->objectives[i] > sk->objectives[i - 1])))
			return 0;
	}
	return 1;
}

/* g^i, the upper edge of bucket i at a schema: exact powers of two at
 * octave edges, the same doubles the writer compares with. */
static inline double shmet_sketch_upper(int32_t schema, int64_t i)
{
	if (schema <= 0)
		return ldexp(1.0, (int)(i * ((int64_t)1 << -schema)));
	int64_t per = (int64_t)1 << schema, oct = i >= 0 ? i / per : -((-i + per - 1) / per);
	return ldexp(exp2((double)(i - oct * per) / (double)per), (int)oct);
}

/* The relative error of a quantile estimated at a schema: (g-1)/(g+1). */
static inline double shmet_sketch_rel_error(int32_t schema)
{
	double g = exp2(ldexp(1.0, -schema));
	return (g - 1) / (g + 1);
}

/* Bytes of value cells a series of this family needs. */
static inline uint32_t shmet_cell_size(unsigned type, uint32_t nbuckets)
{
	switch (type) {
	case SHMET_COUNTER:
	case SHMET_GAUGE:
	case SHMET_SUMMARY:
		return 16;
	case SHMET_HISTOGRAM:
		return (nbuckets + 2) * 8;
	default:
		return 0;
	}
}

/* A retired half's cells: the live layout plus the two lower components
 * of the exact float total (see EXACT FLOAT TOTALS). */
static inline uint32_t shmet_retired_cell_size(unsigned type, uint32_t nbuckets)
{
	uint32_t n = shmet_cell_size(type, nbuckets);
	return n && type != SHMET_GAUGE ? n + 16 : n;
}

/* The same with a sketch of sk_count buckets (0: none) after them. */
static inline uint32_t shmet_cell_size_sk(unsigned type, uint32_t nbuckets, uint32_t sk_count, int retired)
{
	uint32_t n = retired ? shmet_retired_cell_size(type, nbuckets) : shmet_cell_size(type, nbuckets);
	return sk_count ? n + 8 * (sk_count + 2) : n;
}

/* Exemplar slots of a series: one for a counter, one per classic bucket. */
static inline uint32_t shmet_exemplar_slots(unsigned type, uint32_t nbuckets, unsigned exemplars)
{
	return !exemplars ? 0 : type == SHMET_COUNTER ? 1 : type == SHMET_HISTOGRAM ? nbuckets + 1 : 0;
}

/* Every cell of a series: shmet_cell_size_sk plus, in a live region, its
 * exemplar slots (which start at u64 index shmet_cell_size_sk(.., 0) / 8). */
static inline uint32_t shmet_cell_size_ex(unsigned type, uint32_t nbuckets, uint32_t sk_count, unsigned exemplars,
					  int retired)
{
	return shmet_cell_size_sk(type, nbuckets, sk_count, retired) +
	       (retired ? 0 : 8 * SHMET_EXEMPLAR_WORDS * shmet_exemplar_slots(type, nbuckets, exemplars));
}

/* Index (in u64 cells) of a sketch's first count (the one below its window). */
static inline uint32_t shmet_sketch_cell(unsigned type, uint32_t nbuckets, int retired)
{
	return (retired ? shmet_retired_cell_size(type, nbuckets) : shmet_cell_size(type, nbuckets)) / 8;
}

/* Index (in u64 cells) of the float value of a counter, histogram or summary. */
static inline uint32_t shmet_float_cell(unsigned type, uint32_t nbuckets)
{
	return type == SHMET_HISTOGRAM ? nbuckets + 1 : 1;
}

static inline uint64_t shmet_retired_header_size(uint32_t region_count)
{
	uint64_t n = sizeof(struct shmet_retired_header) + 8ull * region_count;
	return (n + SHMET_PAGE - 1) / SHMET_PAGE * SHMET_PAGE;
}

static inline uint64_t shmet__bits(double v)
{
	uint64_t b;
	memcpy(&b, &v, sizeof b);
	return b;
}

static inline double shmet__double(uint64_t b)
{
	double v;
	memcpy(&v, &b, sizeof v);
	return v;
}

static inline uint64_t shmet_align8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* The names tools and the JSON API print for types and gauge modes. */
static inline const char *shmet_type_name(unsigned type)
{
	static const char *const names[] = {"unknown", "counter", "gauge", "histogram", "summary"};
	return type < sizeof names / sizeof *names ? names[type] : "unknown";
}

static inline const char *shmet_gauge_mode_name(unsigned mode)
{
	static const char *const names[] = {"sum", "max", "min", "most_recent", "per_worker"};
	return mode < sizeof names / sizeof *names ? names[mode] : "unknown";
}

/* ---- the family shape rule: one place for the writer and every reader ---- */

/* The fields of a FAMILY record, pointing into the bytes decoded. */
struct shmet_shape {
	unsigned type, mode; /* mode: gauges only, SHMET_GAUGE_SUM otherwise */
	uint32_t nlabels, nbuckets;
	const unsigned char *bounds; /* nbuckets doubles, unaligned */
	const char *name, *help;
	uint32_t name_len, help_len;
	const char *label_names[SHMET_MAX_LABELS];
	uint32_t label_lens[SHMET_MAX_LABELS];
	const unsigned char *sketch; /* the SKETCH block's bytes, sketch_len of them */
	uint32_t sketch_len;
	unsigned exemplars; /* counters, histograms: 1 when they keep exemplars */
};

/* Decode a FAMILY record of size bytes (its 8-byte header included): 1 when
 * every field lies inside it and the counts are within the limits, else 0.
 * Names and text are not checked here; the caller owns the bytes (a private
 * copy, for anything read from the segment). */
static inline int shmet_shape_decode(const unsigned char *rec, size_t size, struct shmet_shape *s)
{
	uint32_t rec_size;
	uint16_t kind, nlabels, name_len, help_len;
	uint32_t nbuckets, sketch_len;
	struct shmet_sketch sk;
	if (size < 24)
		return 0;
	memcpy(&rec_size, rec, 4);
	memcpy(&kind, rec + 4, 2);
	memcpy(&nlabels, rec + 10, 2);
	memcpy(&nbuckets, rec + 12, 4);
	memcpy(&name_len, rec + 16, 2);
	memcpy(&help_len, rec + 18, 2);
	memcpy(&sketch_len, rec + 20, 4);
	if (kind != SHMET_REC_FAMILY || rec_size > size || rec_size < 24 || rec[8] < SHMET_COUNTER ||
	    rec[8] > SHMET_SUMMARY || rec[9] > SHMET_GAUGE_PER_WORKER || nlabels > SHMET_MAX_LABELS ||
	    (rec[8] != SHMET_GAUGE && rec[9] > 1) || (rec[8] == SHMET_SUMMARY && rec[9]) ||
	    nbuckets > SHMET_MAX_BUCKETS || (nbuckets && rec[8] != SHMET_HISTOGRAM) || sketch_len > rec_size - 24 ||
	    !shmet_sketch_decode(rec + rec_size - sketch_len, sketch_len, rec[8], &sk))
		return 0;
	const unsigned char *p = rec + 24, *end = rec + rec_size - sketch_len;
	if ((size_t)(end - p) < 8ull * nbuckets + name_len + help_len)
		return 0;
	memset(s, 0, sizeof *s);
	s->type = rec[8];
	s->mode = rec[8] == SHMET_GAUGE ? rec[9] : (unsigned)SHMET_GAUGE_SUM;
	s->exemplars = rec[8] != SHMET_GAUGE && rec[9] == 1;
	s->nlabels = nlabels;
	s->nbuckets = nbuckets;
	s->bounds = p;
	p += 8ull * nbuckets;
	s->name = (const char *)p;
	s->name_len = name_len;
	p += name_len;
	s->help = (const char *)p;
	s->help_len = help_len;
	s->sketch = end;
	s->sketch_len = sketch_len;
	p += help_len;
	for (uint32_t i = 0; i < nlabels; i++) {
		uint16_t l;
		if (end - p < 2)
			return 0;
		memcpy(&l, p, 2);
		p += 2;
		if ((size_t)(end - p) < l)
			return 0;
		s->label_names[i] = (const char *)p;
		s->label_lens[i] = l;
		p += l;
	}
	return 1;
}

/* The same shape: type, gauge mode, label names and bucket bounds.  The
 * name is compared by the caller (who looked it up); help is no part of a
 * shape (the registry's first help is the one shown). */
static inline int shmet_shape_same(const struct shmet_shape *a, const struct shmet_shape *b)
{
	if (a->type != b->type || a->mode != b->mode || a->nlabels != b->nlabels || a->nbuckets != b->nbuckets)
		return 0;
	for (uint32_t i = 0; i < a->nlabels; i++)
		if (a->label_lens[i] != b->label_lens[i] || memcmp(a->label_names[i], b->label_names[i], a->label_lens[i]))
			return 0;
	if (a->sketch_len != b->sketch_len || (a->sketch_len && memcmp(a->sketch, b->sketch, a->sketch_len)) ||
	    a->exemplars != b->exemplars)
		return 0;
	return a->nbuckets == 0 || memcmp(a->bounds, b->bounds, 8ull * a->nbuckets) == 0;
}

/* The sample and family names a family uses, in either exposition format:
 * x; a counter x_total is also the OpenMetrics family x and has x_created;
 * a histogram adds x_bucket, x_sum, x_count, x_created; a summary x_sum,
 * x_count, x_created.  Writes up to 5 names of at most SHMET_MAX_NAME_LEN
 * + 8 bytes each; returns how many. */
#define SHMET__SAMPLE_NAME_MAX (SHMET_MAX_NAME_LEN + 9)
static inline int shmet__sample_names(const char *name, size_t len, unsigned type,
				      char out[5][SHMET__SAMPLE_NAME_MAX], size_t *lens)
{
	static const char *const sfx[5][5] = {
		{NULL},
		{"", NULL},
		{"", NULL},
		{"", "_bucket", "_sum", "_count", "_created"},
		{"", "_sum", "_count", "_created", NULL},
	};
	int n = 0;
	size_t base = len;
	if (len > SHMET_MAX_NAME_LEN || type < SHMET_COUNTER || type > SHMET_SUMMARY)
		return 0;
	if (type == SHMET_COUNTER && len > 6 && memcmp(name + len - 6, "_total", 6) == 0) {
		base = len - 6;
		memcpy(out[n], name, len), lens[n++] = len;
		memcpy(out[n], name, base), lens[n++] = base;
		memcpy(out[n], name, base), memcpy(out[n] + base, "_created", 8), lens[n++] = base + 8;
		return n;
	}
	for (int i = 0; i < 5 && sfx[type][i]; i++) {
		size_t l = strlen(sfx[type][i]);
		memcpy(out[n], name, len);
		memcpy(out[n] + len, sfx[type][i], l);
		lens[n++] = len + l;
	}
	return n;
}

/* Would families a and b (of different names) produce a sample or family
 * name in common?  Then Prometheus would see one family twice, or keep only
 * the first of two series: one of them must be refused. */
static inline int shmet_names_clash(const char *a, size_t la, unsigned ta, const char *b, size_t lb, unsigned tb)
{
	char na[5][SHMET__SAMPLE_NAME_MAX], nb[5][SHMET__SAMPLE_NAME_MAX];
	size_t lna[5], lnb[5];
	int ca = shmet__sample_names(a, la, ta, na, lna), cb = shmet__sample_names(b, lb, tb, nb, lnb);
	for (int i = 0; i < ca; i++)
		for (int j = 0; j < cb; j++)
			if (lna[i] == lnb[j] && memcmp(na[i], nb[j], lna[i]) == 0)
				return 1;
	return 0;
}

/* "histogram with labels {method,route} and buckets {0.1,1}" for errors. */
static inline void shmet_shape_describe(const struct shmet_shape *s, char *buf, size_t cap)
{
	static const char *const modes[] = {"", " (mode max)", " (mode min)", " (mode most-recent)", " (mode per-worker)"};
	size_t n = 0;
	int w;
	if (cap == 0)
		return;
	buf[0] = 0;
#define SHMET__PUT(...)                                                      \
	do {                                                                 \
		w = snprintf(buf + n, cap - n, __VA_ARGS__);                 \
		if (w < 0 || (size_t)w >= cap - n)                           \
			return;                                              \
		n += (size_t)w;                                              \
	} while (0)
	SHMET__PUT("%s%s", shmet_type_name(s->type), s->type == SHMET_GAUGE && s->mode <= 4 ? modes[s->mode] : "");
	SHMET__PUT("%s with labels {", s->exemplars ? " with exemplars" : "");
	for (uint32_t i = 0; i < s->nlabels; i++)
		SHMET__PUT("%s%.*s", i ? "," : "", (int)s->label_lens[i], s->label_names[i]);
	SHMET__PUT("}");
	if (s->type == SHMET_HISTOGRAM) {
		SHMET__PUT(" and buckets {");
		for (uint32_t i = 0; i < s->nbuckets; i++) {
			double d;
			memcpy(&d, s->bounds + 8ull * i, sizeof d);
			SHMET__PUT("%s%.17g", i ? "," : "", d);
		}
		SHMET__PUT("}");
	}
	struct shmet_sketch sk;
	if (s->sketch_len && shmet_sketch_decode(s->sketch, s->sketch_len, s->type, &sk) && s->type == SHMET_HISTOGRAM) {
		SHMET__PUT(" and native schema %d, zero threshold %.17g, buckets %d..%d", sk.schema, sk.zero_threshold,
			   sk.first, sk.first + (int)sk.count - 1);
	} else if (s->sketch_len && shmet_sketch_decode(s->sketch, s->sketch_len, s->type, &sk)) {
		SHMET__PUT(" and quantiles {");
		for (uint32_t i = 0; i < sk.nobjectives; i++)
			SHMET__PUT("%s%.17g", i ? "," : "", sk.objectives[i]);
		SHMET__PUT("} over %.17g s in %u age buckets, schema %d, buckets %d..%d", (double)sk.max_age_ns / 1e9,
			   sk.age_buckets, sk.schema, sk.first, sk.first + (int)sk.count - 1);
	}
#undef SHMET__PUT
}

/* ---- name and text rules shared by writer, reader and collector ---- */

/* Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]* */
static inline int shmet_valid_metric_name(const char *s, size_t n)
{
	if (n == 0 || n > SHMET_MAX_NAME_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
		if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
			return 0;
	}
	return 1;
}

/* Prometheus: [a-zA-Z_][a-zA-Z0-9_]*; names starting with "__" are reserved. */
static inline int shmet_valid_label_name(const char *s, size_t n)
{
	if (n == 0 || n > SHMET_MAX_NAME_LEN || (n >= 2 && s[0] == '_' && s[1] == '_'))
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
		if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
			return 0;
	}
	return 1;
}

/* Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past U+10FFFF. */
static inline int shmet_valid_utf8(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t len;
		unsigned min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, min = 0x80, c &= 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, min = 0x800, c &= 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, min = 0x10000, c &= 0x07;
		} else {
			return 0;
		}
		if (n - i < len)
			return 0;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			c = c << 6 | (s[i + k] & 0x3f);
		}
		if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
			return 0;
		i += len;
	}
	return 1;
}

/* Exemplar label pairs "name\0value\0"...: valid label names, UTF-8
 * values, at most SHMET_EXEMPLAR_RUNES characters in all.  1 when valid. */
static inline int shmet_exemplar_valid(const char *p, size_t len)
{
	size_t pos = 0, runes = 0;
	int field = 0;
	if (len > SHMET_EXEMPLAR_BYTES)
		return 0;
	while (pos < len) {
		const char *z = (const char *)memchr(p + pos, 0, len - pos);
		if (!z)
			return 0;
		size_t n = (size_t)(z - (p + pos));
		if (field % 2 == 0 ? !shmet_valid_label_name(p + pos, n) : !shmet_valid_utf8(p + pos, n))
			return 0;
		for (size_t i = 0; i < n; i++)
			runes += ((unsigned char)p[pos + i] & 0xc0) != 0x80;
		pos += n + 1;
		field++;
	}
	return field % 2 == 0 && runes <= SHMET_EXEMPLAR_RUNES;
}

#ifdef __cplusplus
}
#endif
#endif /* SHMETRICS_LAYOUT_H */
