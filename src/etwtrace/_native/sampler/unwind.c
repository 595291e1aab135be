/* The sampler's unwinder of stacks without frame pointers (unwind.h):
 * .eh_frame_hdr's sorted table finds an address's FDE, the CIE's and
 * FDE's call frame instructions are run up to the address, and the row
 * they leave (the CFA rule and where the return address and rbp were
 * saved) is cached by address.  The DWARF 5 spec (6.4) and the LSB's
 * .eh_frame description give the formats. */
#include "unwind.h"

#include "arch.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The machine's DWARF register numbers (arch.h): the frame pointer (rbp,
 * x29), the stack pointer and the return address column.  (The names
 * below say rbp and bp for the frame pointer of either machine.) */
#define REG_RBP ETW_DWARF_FP
#define REG_RSP ETW_DWARF_SP
#define REG_RA ETW_DWARF_RA

/* Pointer encodings (DW_EH_PE_*). */
#define PE_OMIT 0xff
#define PE_FORMAT 0x0f
#define PE_ABSPTR 0x00
#define PE_ULEB128 0x01
#define PE_UDATA2 0x02
#define PE_UDATA4 0x03
#define PE_UDATA8 0x04
#define PE_SLEB128 0x09
#define PE_SDATA2 0x0a
#define PE_SDATA4 0x0b
#define PE_SDATA8 0x0c
#define PE_APPLY 0x70
#define PE_PCREL 0x10
#define PE_DATAREL 0x30
#define PE_INDIRECT 0x80

#define MAX_SEGMENTS 16
#define CACHE_SLOTS 16384       /* rows cached, by address (direct-mapped) */
#define STATE_DEPTH 8           /* DW_CFA_remember_state nesting kept */

struct segment {
    uint64_t vaddr, offset, size;   /* a PT_LOAD's file part */
};

struct file {
    uint64_t start, end, bias;
    const uint8_t *data;            /* the file, mapped */
    size_t size;
    struct segment segments[MAX_SEGMENTS];
    int n_segments;
    uint64_t hdr_vaddr;             /* .eh_frame_hdr; 0: no CFI */
    uint64_t table_vaddr;           /* its sorted (location, FDE) table */
    uint64_t fde_count;
};

/* Where a rule says a register was saved. */
enum rule_kind { RULE_SAME, RULE_UNDEFINED, RULE_OFFSET, RULE_OTHER };

struct rule {
    uint8_t kind;
    int64_t offset;                 /* RULE_OFFSET: saved at CFA + offset */
};

struct state {
    uint8_t cfa_reg;                /* REG_RSP or REG_RBP; else unsupported */
    const uint8_t *cfa_expression;  /* a DWARF expression instead (PLT entries,
                                     * realigned stacks), of cfa_offset bytes */
    int64_t cfa_offset;
    struct rule rbp, ra;
};

enum row_status { ROW_OK, ROW_NO_FILE, ROW_NO_CFI, ROW_END, ROW_UNSUPPORTED };

struct row {
    uint64_t address;               /* +1: 0 is an empty slot */
    const uint8_t *cfa_expression;  /* in the mapped file; cfa_offset: its length */
    int32_t cfa_offset;
    int32_t ra_offset;
    int32_t rbp_offset;
    uint8_t cfa_reg;
    uint8_t rbp_saved;
    uint8_t ra_in_lr;               /* no rule: still in the link register */
    uint8_t status;
};

struct etw_unwinder {
    struct file *files;             /* sorted by start */
    int n_files, room;
    /* Allocated untouched (the kernel gives pages as slots are used: a
     * process whose samples land on few addresses costs little) and
     * replaced, not wiped, when the files change. */
    struct row *cache;
    int cache_used;
};

etw_unwinder *
etw_unwinder_new(void)
{
    etw_unwinder *u = calloc(1, sizeof(etw_unwinder));
    if (u != NULL) {
        u->cache = calloc(CACHE_SLOTS, sizeof(struct row));
        if (u->cache == NULL) {
            free(u);
            return NULL;
        }
    }
    return u;
}

/* Forgets the rows cached: what no file held may be in one now. */
static void
forget_rows(etw_unwinder *u)
{
    if (!u->cache_used) {
        return;
    }
    struct row *fresh = calloc(CACHE_SLOTS, sizeof(struct row));
    if (fresh != NULL) {
        free(u->cache);
        u->cache = fresh;
    }
    else {
        memset(u->cache, 0, CACHE_SLOTS * sizeof(struct row));
    }
    u->cache_used = 0;
}

void
etw_unwinder_clear(etw_unwinder *u)
{
    for (int i = 0; i < u->n_files; i++) {
        munmap((void *)u->files[i].data, u->files[i].size);
    }
    u->n_files = 0;
    forget_rows(u);
}

void
etw_unwinder_free(etw_unwinder *u)
{
    if (u != NULL) {
        etw_unwinder_clear(u);
        free(u->files);
        free(u->cache);
        free(u);
    }
}

/* ---- reading the file, by address as linked ---- */

/* The file's bytes at linked address `vaddr`, with *avail bytes there. */
static const uint8_t *
at_vaddr(const struct file *f, uint64_t vaddr, size_t *avail)
{
    for (int i = 0; i < f->n_segments; i++) {
        const struct segment *s = &f->segments[i];
        if (vaddr >= s->vaddr && vaddr - s->vaddr < s->size) {
            uint64_t offset = s->offset + (vaddr - s->vaddr);
            *avail = (size_t)(s->size - (vaddr - s->vaddr));
            return f->data + offset;
        }
    }
    *avail = 0;
    return NULL;
}

/* A cursor over the file's bytes from a linked address on; reads past
 * what is there set `bad` and give zeros. */
struct cursor {
    const uint8_t *p, *end;
    uint64_t vaddr;                 /* of p */
    int bad;
};

static int
cursor_at(struct cursor *c, const struct file *f, uint64_t vaddr)
{
    size_t avail;
    c->p = at_vaddr(f, vaddr, &avail);
    c->end = c->p == NULL ? NULL : c->p + avail;
    c->vaddr = vaddr;
    c->bad = c->p == NULL;
    return !c->bad;
}

static uint64_t
read_bytes(struct cursor *c, size_t n)
{
    uint64_t v = 0;
    if (c->bad || (size_t)(c->end - c->p) < n) {
        c->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        v |= (uint64_t)c->p[i] << (8 * i);
    }
    c->p += n;
    c->vaddr += n;
    return v;
}

static uint64_t
read_uleb(struct cursor *c)
{
    uint64_t v = 0;
    for (unsigned shift = 0; !c->bad; shift += 7) {
        uint8_t b = (uint8_t)read_bytes(c, 1);
        if (shift < 64) {
            v |= (uint64_t)(b & 0x7f) << shift;
        }
        if (!(b & 0x80)) {
            break;
        }
    }
    return v;
}

static int64_t
read_sleb(struct cursor *c)
{
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0;
    do {
        b = (uint8_t)read_bytes(c, 1);
        if (shift < 64) {
            v |= (uint64_t)(b & 0x7f) << shift;
        }
        shift += 7;
    } while ((b & 0x80) && !c->bad);
    if (shift < 64 && (b & 0x40)) {
        v |= ~(uint64_t)0 << shift;
    }
    return (int64_t)v;
}

static void
skip(struct cursor *c, uint64_t n)
{
    if (c->bad || (uint64_t)(c->end - c->p) < n) {
        c->bad = 1;
        return;
    }
    c->p += n;
    c->vaddr += n;
}

/* A pointer in encoding `enc`, relative to `datarel` for DW_EH_PE_datarel;
 * indirect pointers (the personality's) are not followed. */
static uint64_t
read_encoded(struct cursor *c, uint8_t enc, uint64_t datarel)
{
    uint64_t here = c->vaddr, v;
    if (enc == PE_OMIT) {
        return 0;
    }
    switch (enc & PE_FORMAT) {
    case PE_ABSPTR: case PE_UDATA8: case PE_SDATA8: v = read_bytes(c, 8); break;
    case PE_ULEB128: v = read_uleb(c); break;
    case PE_SLEB128: v = (uint64_t)read_sleb(c); break;
    case PE_UDATA2: v = read_bytes(c, 2); break;
    case PE_SDATA2: v = (uint64_t)(int64_t)(int16_t)read_bytes(c, 2); break;
    case PE_UDATA4: v = read_bytes(c, 4); break;
    case PE_SDATA4: v = (uint64_t)(int64_t)(int32_t)read_bytes(c, 4); break;
    default: c->bad = 1; return 0;
    }
    switch (enc & PE_APPLY) {
    case 0: break;
    case PE_PCREL: v += here; break;
    case PE_DATAREL: v += datarel; break;
    default: c->bad = 1; return 0;
    }
    return v;
}

/* ---- adding files ---- */

static int
load_headers(struct file *f)
{
    if (f->size < sizeof(Elf64_Ehdr) || memcmp(f->data, ELFMAG, SELFMAG) != 0
        || f->data[EI_CLASS] != ELFCLASS64 || f->data[EI_DATA] != ELFDATA2LSB) {
        return -1;
    }
    Elf64_Ehdr eh;
    memcpy(&eh, f->data, sizeof eh);
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff > f->size
        || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > f->size - eh.e_phoff) {
        return -1;
    }
    uint64_t hdr = 0;
    int has_hdr = 0;
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, f->data + eh.e_phoff + (size_t)i * sizeof ph, sizeof ph);
        if (ph.p_type == PT_LOAD && f->n_segments < MAX_SEGMENTS && ph.p_offset <= f->size) {
            struct segment *s = &f->segments[f->n_segments++];
            s->vaddr = ph.p_vaddr;
            s->offset = ph.p_offset;
            s->size = ph.p_filesz < f->size - ph.p_offset ? ph.p_filesz : f->size - ph.p_offset;
        }
        else if (ph.p_type == PT_GNU_EH_FRAME) {
            hdr = ph.p_vaddr;
            has_hdr = 1;
        }
    }
    if (!has_hdr) {
        return 0;
    }
    /* .eh_frame_hdr: version 1, the encodings of the .eh_frame pointer, of
     * the count and of the table, then those three; the table is searched
     * only in the encoding every linker writes (datarel, sdata4). */
    struct cursor c;
    if (!cursor_at(&c, f, hdr)) {
        return 0;
    }
    uint8_t version = (uint8_t)read_bytes(&c, 1);
    uint8_t ptr_enc = (uint8_t)read_bytes(&c, 1);
    uint8_t count_enc = (uint8_t)read_bytes(&c, 1);
    uint8_t table_enc = (uint8_t)read_bytes(&c, 1);
    read_encoded(&c, ptr_enc, hdr);
    uint64_t count = read_encoded(&c, count_enc, hdr);
    if (c.bad || version != 1 || table_enc != (PE_DATAREL | PE_SDATA4)
        || count > (uint64_t)(c.end - c.p) / 8) {
        return 0;
    }
    f->hdr_vaddr = hdr;
    f->table_vaddr = c.vaddr;
    f->fde_count = count;
    return 0;
}

int
etw_unwinder_add(etw_unwinder *u, uint64_t start, uint64_t end, uint64_t bias,
                 const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
        int e = errno;
        close(fd);
        errno = e ? e : ENOEXEC;
        return -1;
    }
    void *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED) {
        return -1;
    }
    struct file f;
    memset(&f, 0, sizeof f);
    f.start = start;
    f.end = end;
    f.bias = bias;
    f.data = data;
    f.size = (size_t)st.st_size;
    if (load_headers(&f) != 0) {
        munmap(data, f.size);
        errno = ENOEXEC;
        return -1;
    }
    if (u->n_files == u->room) {
        int room = u->room ? u->room * 2 : 16;
        struct file *grown = realloc(u->files, (size_t)room * sizeof *grown);
        if (grown == NULL) {
            munmap(data, f.size);
            errno = ENOMEM;
            return -1;
        }
        u->files = grown;
        u->room = room;
    }
    int i = u->n_files++;
    while (i > 0 && u->files[i - 1].start > start) {
        u->files[i] = u->files[i - 1];
        i--;
    }
    u->files[i] = f;
    forget_rows(u);
    return 0;
}

static const struct file *
file_of(const etw_unwinder *u, uint64_t address)
{
    int lo = 0, hi = u->n_files;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (u->files[mid].start <= address) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    if (lo > 0 && address < u->files[lo - 1].end) {
        return &u->files[lo - 1];
    }
    return NULL;
}

/* ---- call frame information ---- */

/* The FDE (its linked address) whose range holds `pc`, by the sorted
 * table, or 0. */
static uint64_t
find_fde(const struct file *f, uint64_t pc)
{
    uint64_t lo = 0, hi = f->fde_count;
    size_t avail;
    const uint8_t *table = at_vaddr(f, f->table_vaddr, &avail);
    if (table == NULL || avail / 8 < f->fde_count) {
        return 0;
    }
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int32_t loc;
        memcpy(&loc, table + mid * 8, 4);
        if (f->hdr_vaddr + (uint64_t)(int64_t)loc <= pc) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    if (lo == 0) {
        return 0;
    }
    int32_t fde;
    memcpy(&fde, table + (lo - 1) * 8 + 4, 4);
    return f->hdr_vaddr + (uint64_t)(int64_t)fde;
}

struct cie {
    uint64_t code_align;
    int64_t data_align;
    uint64_t ra_reg;
    uint8_t fde_enc;
    int has_augmentation_data;
    struct cursor instructions;     /* up to the CIE's end */
};

/* An entry's length and the cursor's end set to its end. */
static int
entry_bounds(struct cursor *c)
{
    uint64_t length = read_bytes(c, 4);
    if (length == 0xffffffff) {
        length = read_bytes(c, 8);
    }
    if (c->bad || length == 0 || length > (uint64_t)(c->end - c->p)) {
        return -1;
    }
    c->end = c->p + length;
    return 0;
}

static int
parse_cie(const struct file *f, uint64_t vaddr, struct cie *cie)
{
    struct cursor c;
    if (!cursor_at(&c, f, vaddr) || entry_bounds(&c) != 0 || read_bytes(&c, 4) != 0) {
        return -1;
    }
    uint8_t version = (uint8_t)read_bytes(&c, 1);
    char augmentation[8];
    size_t n = 0;
    for (;;) {
        char ch = (char)read_bytes(&c, 1);
        if (c.bad || ch == '\0') {
            break;
        }
        if (n + 1 >= sizeof augmentation) {
            return -1;
        }
        augmentation[n++] = ch;
    }
    augmentation[n] = '\0';
    cie->code_align = read_uleb(&c);
    cie->data_align = read_sleb(&c);
    cie->ra_reg = version == 1 ? read_bytes(&c, 1) : read_uleb(&c);
    cie->fde_enc = PE_ABSPTR;
    cie->has_augmentation_data = augmentation[0] == 'z';
    if (augmentation[0] == 'z') {
        uint64_t length = read_uleb(&c);
        struct cursor data = c;
        for (size_t i = 1; i < n && !data.bad; i++) {
            switch (augmentation[i]) {
            case 'R': cie->fde_enc = (uint8_t)read_bytes(&data, 1); break;
            case 'L': read_bytes(&data, 1); break;
            case 'P': {
                uint8_t enc = (uint8_t)read_bytes(&data, 1);
                read_encoded(&data, enc & ~PE_INDIRECT, 0);
                break;
            }
            case 'S': case 'B': break;
            default: i = n; break;      /* the rest is unknown: the length skips it */
            }
        }
        skip(&c, length);
    }
    else if (n > 0) {
        return -1;      /* no 'z': the augmentation's data cannot be skipped */
    }
    if (c.bad || cie->ra_reg != REG_RA) {
        return -1;
    }
    cie->instructions = c;
    return 0;
}

/* A factored offset times the CIE's data alignment, wrapping as the
 * machine does (a corrupt file must not make it undefined behaviour). */
static int64_t
scaled(uint64_t factored, int64_t align)
{
    return (int64_t)(factored * (uint64_t)align);
}

/* Runs call frame instructions from `c` on `st` while the location stays
 * at or before `pc`; `initial` is the CIE's row (for DW_CFA_restore).
 * Returns 1 when `pc` was passed, 0 at the instructions' end, -1 for
 * what it cannot follow. */
static int
run_cfa(struct cursor *c, const struct cie *cie, struct state *st, const struct state *initial,
        uint64_t *loc, uint64_t pc)
{
    struct state saved[STATE_DEPTH];
    int depth = 0;
    while (!c->bad && c->p < c->end) {
        uint8_t op = (uint8_t)read_bytes(c, 1);
        uint64_t reg = 0, advance = 0;
        int64_t offset = 0;
        struct rule *rule = NULL;
        uint8_t high = op & 0xc0, low = op & 0x3f;
        if (high == 0x40) {                             /* advance_loc */
            advance = low;
        }
        else if (high == 0x80) {                        /* offset */
            reg = low;
            offset = scaled(read_uleb(c), cie->data_align);
            rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
            if (rule != NULL) {
                rule->kind = RULE_OFFSET;
                rule->offset = offset;
            }
            continue;
        }
        else if (high == 0xc0) {                        /* restore */
            if (low == REG_RBP) {
                st->rbp = initial->rbp;
            }
            else if (low == REG_RA) {
                st->ra = initial->ra;
            }
            continue;
        }
        else {
            switch (op) {
            case 0x00: continue;                        /* nop */
            case 0x01:                                  /* set_loc */
                *loc = read_encoded(c, cie->fde_enc, 0);
                if (*loc > pc) {
                    return 1;
                }
                continue;
            case 0x02: advance = read_bytes(c, 1); break;
            case 0x03: advance = read_bytes(c, 2); break;
            case 0x04: advance = read_bytes(c, 4); break;
            case 0x05: case 0x11: case 0x14: case 0x15: /* offset_extended(_sf), val_offset(_sf) */
                reg = read_uleb(c);
                offset = scaled(op == 0x05 || op == 0x14 ? read_uleb(c) : (uint64_t)read_sleb(c),
                                cie->data_align);
                rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
                if (rule != NULL) {
                    rule->kind = op == 0x05 || op == 0x11 ? RULE_OFFSET : RULE_OTHER;
                    rule->offset = offset;
                }
                continue;
            case 0x06:                                  /* restore_extended */
                reg = read_uleb(c);
                if (reg == REG_RBP) {
                    st->rbp = initial->rbp;
                }
                else if (reg == REG_RA) {
                    st->ra = initial->ra;
                }
                continue;
            case 0x07: case 0x08:                       /* undefined, same_value */
                reg = read_uleb(c);
                rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
                if (rule != NULL) {
                    rule->kind = op == 0x07 ? RULE_UNDEFINED : RULE_SAME;
                }
                continue;
            case 0x09:                                  /* register */
                reg = read_uleb(c);
                read_uleb(c);
                rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
                if (rule != NULL) {
                    rule->kind = RULE_OTHER;
                }
                continue;
            case 0x0a:                                  /* remember_state */
                if (depth == STATE_DEPTH) {
                    return -1;
                }
                saved[depth++] = *st;
                continue;
            case 0x0b:                                  /* restore_state */
                if (depth == 0) {
                    return -1;
                }
                *st = saved[--depth];   /* the CFA rule too, as compilers expect */
                continue;
            case 0x0c:                                  /* def_cfa */
                st->cfa_reg = (uint8_t)read_uleb(c);
                st->cfa_offset = (int64_t)read_uleb(c);
                st->cfa_expression = NULL;
                continue;
            case 0x12:                                  /* def_cfa_sf */
                st->cfa_reg = (uint8_t)read_uleb(c);
                st->cfa_offset = scaled((uint64_t)read_sleb(c), cie->data_align);
                st->cfa_expression = NULL;
                continue;
            case 0x0d:                                  /* def_cfa_register */
                st->cfa_reg = (uint8_t)read_uleb(c);
                st->cfa_expression = NULL;
                continue;
            case 0x0e:                                  /* def_cfa_offset */
                st->cfa_offset = (int64_t)read_uleb(c);
                continue;
            case 0x13:                                  /* def_cfa_offset_sf */
                st->cfa_offset = scaled((uint64_t)read_sleb(c), cie->data_align);
                continue;
            case 0x0f:                                  /* def_cfa_expression */
                advance = read_uleb(c);
                st->cfa_expression = c->p;
                st->cfa_offset = (int64_t)advance;
                skip(c, advance);
                advance = 0;
                continue;
            case 0x10: case 0x16:                       /* expression, val_expression */
                reg = read_uleb(c);
                skip(c, read_uleb(c));
                rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
                if (rule != NULL) {
                    rule->kind = RULE_OTHER;
                }
                continue;
#ifdef ETW_CFA_NEGATE_RA_STATE
            case ETW_CFA_NEGATE_RA_STATE:               /* return addresses signed */
                continue;                               /* (stripped when read) */
#endif
            case 0x2e:                                  /* GNU_args_size */
                read_uleb(c);
                continue;
            case 0x2f:                                  /* GNU_negative_offset_extended */
                reg = read_uleb(c);
                offset = scaled(0 - read_uleb(c), cie->data_align);
                rule = reg == REG_RBP ? &st->rbp : reg == REG_RA ? &st->ra : NULL;
                if (rule != NULL) {
                    rule->kind = RULE_OFFSET;
                    rule->offset = offset;
                }
                continue;
            default:
                return -1;
            }
        }
        *loc += advance * cie->code_align;
        if (*loc > pc) {
            return 1;
        }
    }
    return c->bad ? -1 : 0;
}

/* The row for linked address `pc` of file `f`. */
static void
compute_row(const struct file *f, uint64_t pc, struct row *row)
{
    row->status = ROW_NO_CFI;
    uint64_t fde_vaddr = f->hdr_vaddr ? find_fde(f, pc) : 0;
    struct cursor c;
    if (fde_vaddr == 0 || !cursor_at(&c, f, fde_vaddr) || entry_bounds(&c) != 0) {
        return;
    }
    uint64_t id_vaddr = c.vaddr;
    uint64_t cie_pointer = read_bytes(&c, 4);
    struct cie cie;
    if (c.bad || cie_pointer == 0 || parse_cie(f, id_vaddr - cie_pointer, &cie) != 0) {
        return;
    }
    uint64_t begin = read_encoded(&c, cie.fde_enc, 0);
    uint64_t range = read_encoded(&c, cie.fde_enc & PE_FORMAT, 0);
    if (cie.has_augmentation_data) {
        skip(&c, read_uleb(&c));
    }
    if (c.bad || pc < begin || pc - begin >= range) {
        return;
    }
    struct state st = {.cfa_reg = REG_RSP, .cfa_offset = ETW_CFI_CFA_AT_ENTRY,
                       .rbp = {RULE_SAME, 0}, .ra = {RULE_SAME, 0}};
    uint64_t loc = begin;
    struct cursor initial_instructions = cie.instructions;
    if (run_cfa(&initial_instructions, &cie, &st, &st, &loc, ~(uint64_t)0) < 0) {
        row->status = ROW_UNSUPPORTED;
        return;
    }
    struct state initial = st;
    loc = begin;
    if (run_cfa(&c, &cie, &st, &initial, &loc, pc) < 0) {
        row->status = ROW_UNSUPPORTED;
        return;
    }
    if (st.ra.kind == RULE_UNDEFINED) {
        row->status = ROW_END;
        return;
    }
    int ra_in_lr = ETW_ARCH_HAVE_LINK_REGISTER && st.ra.kind == RULE_SAME;
    if ((st.cfa_expression == NULL && st.cfa_reg != REG_RSP && st.cfa_reg != REG_RBP)
        || (st.ra.kind != RULE_OFFSET && !ra_in_lr) || st.rbp.kind == RULE_OTHER
        || st.cfa_offset < INT32_MIN || st.cfa_offset > INT32_MAX
        || st.ra.offset < INT32_MIN || st.ra.offset > INT32_MAX
        || st.rbp.offset < INT32_MIN || st.rbp.offset > INT32_MAX) {
        row->status = ROW_UNSUPPORTED;
        return;
    }
    row->status = ROW_OK;
    row->cfa_expression = st.cfa_expression;
    row->cfa_reg = st.cfa_reg;
    row->cfa_offset = (int32_t)st.cfa_offset;
    row->ra_offset = (int32_t)st.ra.offset;
    row->ra_in_lr = (uint8_t)ra_in_lr;
    row->rbp_saved = st.rbp.kind == RULE_OFFSET;
    row->rbp_offset = (int32_t)st.rbp.offset;
}

static const struct row *
row_at(etw_unwinder *u, uint64_t address)
{
    struct row *row = &u->cache[(address ^ (address >> 14)) % CACHE_SLOTS];
    if (row->address == address + 1) {
        return row;
    }
    memset(row, 0, sizeof *row);
    row->address = address + 1;
    u->cache_used = 1;
    const struct file *f = file_of(u, address);
    if (f == NULL) {
        row->status = ROW_NO_FILE;
    }
    else {
        compute_row(f, address - f->bias, row);
    }
    return row;
}

/* ---- unwinding ---- */

static int
stack_word(uint64_t address, uint64_t sp, const uint8_t *stack, size_t size, uint64_t *value)
{
    if (address < sp || address - sp > size || size - (address - sp) < 8) {
        return 0;
    }
    memcpy(value, stack + (address - sp), 8);
    return 1;
}

/* The registers an unwinding step knows. */
struct regs {
    uint64_t ip, sp, bp;
};

/* The value of a DWARF expression (DWARF 5, 2.5) of `len` bytes at `p`:
 * the operations compilers put in CFA rules (PLT entries, stacks
 * realigned through a saved register).  Returns 0 for one it does not
 * evaluate or a read outside the copy. */
static int
evaluate(const uint8_t *p, size_t len, const struct regs *r, uint64_t base,
         const uint8_t *stack, size_t size, uint64_t *result)
{
    uint64_t st[16];
    int n = 0;
    struct cursor c = {.p = p, .end = p + len, .vaddr = 0, .bad = 0};
    while (!c.bad && c.p < c.end) {
        uint8_t op = (uint8_t)read_bytes(&c, 1);
        uint64_t a, b, v;
        if (op >= 0x30 && op <= 0x4f) {                 /* lit0..lit31 */
            v = op - 0x30;
        }
        else if (op >= 0x70 && op <= 0x8f) {            /* breg0..breg31 */
            int reg = op - 0x70;
            int64_t offset = read_sleb(&c);
            if (reg == REG_RSP) {
                v = r->sp;
            }
            else if (reg == REG_RBP) {
                v = r->bp;
            }
            else if (reg == REG_RA) {
                v = r->ip;
            }
            else {
                return 0;
            }
            v += (uint64_t)offset;
        }
        else {
            switch (op) {
            case 0x08: v = read_bytes(&c, 1); break;                            /* const1u */
            case 0x09: v = (uint64_t)(int64_t)(int8_t)read_bytes(&c, 1); break; /* const1s */
            case 0x0a: v = read_bytes(&c, 2); break;
            case 0x0b: v = (uint64_t)(int64_t)(int16_t)read_bytes(&c, 2); break;
            case 0x0c: v = read_bytes(&c, 4); break;
            case 0x0d: v = (uint64_t)(int64_t)(int32_t)read_bytes(&c, 4); break;
            case 0x0e: case 0x0f: v = read_bytes(&c, 8); break;
            case 0x10: v = read_uleb(&c); break;                                /* constu */
            case 0x11: v = (uint64_t)read_sleb(&c); break;                      /* consts */
            case 0x06:                                                          /* deref */
                if (n < 1) {
                    return 0;
                }
                a = st[--n];
                if (a < base || a - base > size || size - (a - base) < 8) {
                    return 0;
                }
                memcpy(&v, stack + (a - base), 8);
                break;
            case 0x12:                                                          /* dup */
                if (n < 1) {
                    return 0;
                }
                v = st[n - 1];
                break;
            case 0x23:                                                          /* plus_uconst */
                if (n < 1) {
                    return 0;
                }
                v = st[--n] + read_uleb(&c);
                break;
            default:
                /* Binary operations: b is the top, a below it. */
                if (n < 2) {
                    return 0;
                }
                b = st[--n];
                a = st[--n];
                switch (op) {
                case 0x1a: v = a & b; break;
                case 0x1c: v = a - b; break;
                case 0x1e: v = a * b; break;
                case 0x21: v = a | b; break;
                case 0x22: v = a + b; break;
                case 0x24: v = b < 64 ? a << b : 0; break;
                case 0x25: v = b < 64 ? a >> b : 0; break;
                case 0x27: v = a ^ b; break;
                case 0x29: v = (int64_t)a == (int64_t)b; break;
                case 0x2a: v = (int64_t)a >= (int64_t)b; break;
                case 0x2b: v = (int64_t)a > (int64_t)b; break;
                case 0x2c: v = (int64_t)a <= (int64_t)b; break;
                case 0x2d: v = (int64_t)a < (int64_t)b; break;
                case 0x2e: v = (int64_t)a != (int64_t)b; break;
                default: return 0;
                }
            }
        }
        if (n == (int)(sizeof st / sizeof st[0])) {
            return 0;
        }
        st[n++] = v;
    }
    if (c.bad || n < 1) {
        return 0;
    }
    *result = st[n - 1];
    return 1;
}

uint32_t
etw_unwind(etw_unwinder *u, uint64_t ip, uint64_t sp, uint64_t bp, uint64_t lr,
           const uint8_t *stack, size_t size, uint64_t *out, uint32_t room,
           enum etw_unwind_end *end)
{
    uint64_t base = sp;     /* the copy's address */
    uint32_t n = 0;
    *end = ETW_UNWIND_FULL;
    if (room == 0 || ip == 0) {
        *end = ETW_UNWIND_COMPLETE;
        return 0;
    }
    out[n++] = ip;
    while (n < room) {
        /* A return address is the instruction after the call: the call
         * itself (its last byte) is what the CFI of the caller covers. */
        const struct row *row = row_at(u, n == 1 ? ip : ip - 1);
        uint64_t cfa, ra, saved_bp = bp;
        if (row->status == ROW_END) {
            *end = ETW_UNWIND_COMPLETE;
            break;
        }
        if (row->status == ROW_NO_FILE) {
            /* Code of no file (JIT code, trampolines) may keep frame
             * pointers: follow rbp while it points into the copy above. */
            if (bp <= sp || !stack_word(bp, base, stack, size, &saved_bp)
                || !stack_word(bp + 8, base, stack, size, &ra)) {
                *end = ETW_UNWIND_NO_FILE;
                break;
            }
            cfa = bp + 16;
        }
        else if (row->status != ROW_OK) {
            *end = row->status == ROW_NO_CFI ? ETW_UNWIND_NO_CFI : ETW_UNWIND_UNSUPPORTED;
            break;
        }
        else {
            if (row->cfa_expression != NULL) {
                struct regs r = {ip, sp, bp};
                if (!evaluate(row->cfa_expression, (size_t)row->cfa_offset, &r, base, stack,
                              size, &cfa)) {
                    *end = ETW_UNWIND_UNSUPPORTED;
                    break;
                }
            }
            else {
                cfa = (row->cfa_reg == REG_RSP ? sp : bp) + (uint64_t)(int64_t)row->cfa_offset;
            }
            uint64_t rbp_at = cfa + (uint64_t)(int64_t)row->rbp_offset;
            if (row->ra_in_lr) {
                /* Only the leaf's is known: above it, the register has
                 * been overwritten by the calls made since. */
                if (n != 1) {
                    *end = ETW_UNWIND_UNSUPPORTED;
                    break;
                }
                ra = lr;
            }
            else if (!stack_word(cfa + (uint64_t)(int64_t)row->ra_offset, base, stack, size,
                                 &ra)) {
                *end = ETW_UNWIND_OUTSIDE_COPY;
                break;
            }
            /* rbp's slot below the stack pointer: an epilogue popped it
             * already (compilers leave its rule as it was), so rbp holds
             * the caller's value. */
            if (row->rbp_saved && rbp_at >= sp
                && !stack_word(rbp_at, base, stack, size, &saved_bp)) {
                *end = ETW_UNWIND_OUTSIDE_COPY;
                break;
            }
        }
        /* (A leaf with its return address in the link register may have
         * no frame: the CFA is its stack pointer.) */
        if (cfa < sp || (cfa == sp && !row->ra_in_lr)) {
            *end = ETW_UNWIND_UNSUPPORTED;      /* no progress: a loop */
            break;
        }
        if (ra == 0) {
            *end = ETW_UNWIND_COMPLETE;
            break;
        }
        sp = cfa;
        bp = saved_bp;
        ip = ETW_ARCH_STRIP_RA(ra);
        out[n++] = ip;
    }
    return n;
}
