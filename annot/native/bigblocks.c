/* annot's large-block cache: a layer over the C library's malloc, preloaded with LD_PRELOAD.
 *
 * A training step allocates the same large tensors every time and frees them again. glibc either
 * keeps them in its heap, where they interleave with millions of small objects and leave holes that
 * later steps cannot reuse (peak RSS grows), or maps each one on its own and unmaps it on free, so the
 * next step faults and zeroes every page again (slow). This layer takes the large requests only
 * (malloc and posix_memalign of at least ANNOT_MALLOC_BIG_MIN bytes, 128 KiB by default): each gets a
 * block of its own, outside the heap, in one reserved address range; a freed block is kept warm
 * (its pages stay mapped) in a list of its size class and handed to the next request of that class.
 * The memory the layer holds (blocks in use + warm free blocks) never exceeds the highest the blocks in
 * use ever reached plus ANNOT_MALLOC_SLACK_MIB (64 by default): when a request needs a block no warm
 * one fits, warm blocks are released to the kernel first, least recently freed first (their address
 * range is kept for a later block of the same class). So a step that repeats the previous one's
 * requests gets every block back warm (no page is faulted in again), and the layer's share of the
 * peak RSS is the peak of the live blocks plus the slack, not the sum of every size ever freed. Every
 * other request, and every block this layer cannot place, goes to the C library unchanged.
 *
 * Size classes: 16 per power of two (a block is at most 1/16 larger than asked; pages never touched
 * take no memory). The 64 bytes before each pointer hold the block's bookkeeping; the last 8 of them
 * look like glibc's header of an mmapped chunk, so glibc's malloc_usable_size answers correctly.
 *
 * Built by annot.allocator (cc -O2 -shared -fPIC) into annot's cache on first use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

#define HEADER 64                         /* bytes before each pointer: keeps 64-byte alignment */
#define PAGE 4096
#define SUB_BITS 4                        /* 16 size classes per power of two */
#define SUB (1 << SUB_BITS)
#define MIN_SHIFT 16                      /* blocks above 64 KiB (a class step is then >= one page) */
#define MAX_SHIFT 40                      /* blocks up to 1 TiB */
#define NCLASS ((MAX_SHIFT - MIN_SHIFT) * SUB)

struct block {                            /* the first bytes of every block */
    struct block *lru_prev, *lru_next;    /* warm free blocks, most recently freed at the head */
    struct block *cls_prev, *cls_next;    /* the block's class list (warm: both links; cold: next) */
    size_t size;                          /* the whole block, header included */
    int cls;
    int state;                            /* IN_USE, WARM or COLD */
};
_Static_assert(sizeof(struct block) <= HEADER - sizeof(size_t), "bookkeeping overlaps glibc's size word");

enum { IN_USE = 1, WARM = 2, COLD = 3 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int active;                        /* set once by the constructor */
static size_t big_min = (size_t)128 << 10;
static size_t slack = (size_t)64 << 20;
static char *base, *bump, *limit;         /* the reserved range and its next unused address */
static struct block *warm[NCLASS], *cold[NCLASS];
static struct block *lru_head, *lru_tail;
static size_t warm_bytes, in_use_bytes, peak_in_use, cold_blocks, released_blocks, reused_blocks, new_blocks;

static size_t env_size(const char *name, size_t fallback, size_t unit) {
    const char *s = getenv(name);
    unsigned long long v = fallback;
    if (s && *s) {
        char *end;
        v = strtoull(s, &end, 10);
        if (*end)
            v = fallback;
    }
    return (size_t)v * unit;
}

static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void bigblocks_init(void) {
    size_t want = env_size("ANNOT_MALLOC_BIG_MIN", (size_t)128 << 10, 1);  /* bytes */
    big_min = want < ((size_t)1 << MIN_SHIFT) ? ((size_t)1 << MIN_SHIFT) : want;
    slack = env_size("ANNOT_MALLOC_SLACK_MIB", 64, (size_t)1 << 20);  /* MiB */
    struct rlimit as;                     /* under an address-space limit, take at most half of it */
    size_t most = (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) ? (size_t)as.rlim_cur / 2
                                                                                  : (size_t)-1;
    for (size_t size = (size_t)1 << MAX_SHIFT; size >= ((size_t)1 << 30) && !base; size >>= 1) {
        if (size > most)                  /* address space only: no memory is committed here */
            continue;
        void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            base = bump = p;
            limit = base + size;
        }
    }
    if (!base)
        return;                           /* everything stays with the C library */
    pthread_atfork(before_fork, after_fork, after_fork);
    active = 1;
}

static inline int ours(const void *p) { return (const char *)p >= base && (const char *)p < limit; }

static void lru_unlink(struct block *b) {
    if (b->lru_prev) b->lru_prev->lru_next = b->lru_next; else lru_head = b->lru_next;
    if (b->lru_next) b->lru_next->lru_prev = b->lru_prev; else lru_tail = b->lru_prev;
}

static void warm_unlink(struct block *b) {
    if (b->cls_prev) b->cls_prev->cls_next = b->cls_next; else warm[b->cls] = b->cls_next;
    if (b->cls_next) b->cls_next->cls_prev = b->cls_prev;
    lru_unlink(b);
    warm_bytes -= b->size;
}

static void release_for(size_t size) {    /* lock held: make room for `size` more bytes in use */
    size_t after = in_use_bytes + size;
    size_t budget = (after > peak_in_use ? after : peak_in_use) + slack;
    while (after + warm_bytes > budget && lru_tail) {
        struct block *b = lru_tail;
        warm_unlink(b);
        madvise((char *)b + PAGE, b->size - PAGE, MADV_DONTNEED);  /* keep the header's page */
        b->state = COLD;
        b->cls_next = cold[b->cls];
        cold[b->cls] = b;
        cold_blocks++;
        released_blocks++;
    }
}

static void *alloc_big(size_t n) {
    if (n > ((size_t)1 << MAX_SHIFT))
        return NULL;
    size_t total = (n + HEADER + PAGE - 1) & ~(size_t)(PAGE - 1);
    int e = 63 - __builtin_clzll(total - 1);          /* total lies in (2^e, 2^(e+1)] */
    if (e < MIN_SHIFT || e >= MAX_SHIFT)
        return NULL;
    size_t step = (size_t)1 << (e - SUB_BITS);
    size_t k = (total + step - 1) / step;              /* SUB < k <= 2 * SUB */
    size_t size = k * step;
    int cls = (e - MIN_SHIFT) * SUB + (int)(k - SUB - 1);
    struct block *b;
    pthread_mutex_lock(&lock);
    if ((b = warm[cls])) {
        warm_unlink(b);
        reused_blocks++;
    } else if ((b = cold[cls])) {
        cold[cls] = b->cls_next;
        cold_blocks--;
        reused_blocks++;
        release_for(b->size);
    } else {
        release_for(size);
        if ((size_t)(limit - bump) < size || mprotect(bump, size, PROT_READ | PROT_WRITE) != 0) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        b = (struct block *)bump;
        bump += size;
        b->size = size;
        b->cls = cls;
        new_blocks++;
    }
    b->state = IN_USE;
    in_use_bytes += b->size;
    if (in_use_bytes > peak_in_use)
        peak_in_use = in_use_bytes;
    pthread_mutex_unlock(&lock);
    char *p = (char *)b + HEADER;
    ((size_t *)p)[-1] = (b->size - HEADER + 2 * sizeof(size_t)) | 2;  /* glibc: mmapped chunk of this size */
    return p;
}

static void free_big(void *p) {
    struct block *b = (struct block *)((char *)p - HEADER);
    pthread_mutex_lock(&lock);
    if (b->state != IN_USE)
        abort();                          /* a double free: stop here, not corrupt the lists */
    in_use_bytes -= b->size;
    b->state = WARM;
    b->cls_prev = NULL;
    b->cls_next = warm[b->cls];
    if (b->cls_next) b->cls_next->cls_prev = b;
    warm[b->cls] = b;
    b->lru_prev = NULL;
    b->lru_next = lru_head;
    if (lru_head) lru_head->lru_prev = b; else lru_tail = b;
    lru_head = b;
    warm_bytes += b->size;
    pthread_mutex_unlock(&lock);
}

void *malloc(size_t n) {
    if (n >= big_min && active) {
        void *p = alloc_big(n);
        if (p)
            return p;
    }
    return __libc_malloc(n);
}

void free(void *p) {
    if (!p)
        return;
    if (ours(p))
        free_big(p);
    else
        __libc_free(p);
}

int posix_memalign(void **out, size_t alignment, size_t n) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)))
        return EINVAL;
    void *p = NULL;
    if (n >= big_min && active && alignment <= HEADER)
        p = alloc_big(n);
    if (!p)
        p = __libc_memalign(alignment, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *realloc(void *p, size_t n) {
    if (!p)
        return malloc(n);
    if (!ours(p))
        return __libc_realloc(p, n);
    if (n == 0) {
        free_big(p);
        return NULL;
    }
    size_t usable = ((struct block *)((char *)p - HEADER))->size - HEADER;
    if (n <= usable && n >= big_min)
        return p;
    void *q = malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, n < usable ? n : usable);
    free_big(p);
    return q;
}

/* For annot.allocator and its tests (ctypes): fills out[0..8] and returns 1 when the layer is active. */
int annot_bigblocks_stats(size_t *out) {
    pthread_mutex_lock(&lock);
    out[0] = in_use_bytes;
    out[1] = warm_bytes;
    out[2] = cold_blocks;
    out[3] = (size_t)(bump - base);
    out[4] = new_blocks;
    out[5] = reused_blocks;
    out[6] = released_blocks;
    out[7] = big_min;
    out[8] = peak_in_use;
    pthread_mutex_unlock(&lock);
    return active;
}
