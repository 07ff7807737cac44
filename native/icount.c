/* The native clocks of the CPU layer: the fast mode's block-counting hook (for
 * machine/x86/fast_clock.py), the exact mode's instruction-counting hook (for
 * machine/x86/exact_clock.py, below) and RDTSC from virtual time (machine/x86/tsc.py).
 *
 * In the fast mode the engine runs with count = 0 and
 * this block hook, called natively at every translated block start (no Python per block),
 * charges the block to the slice's clock instead: an approximate instruction count derived
 * from the block's size in bytes.  At a block start it also ends the slice, cleanly (the block
 * has not run yet: uc_emu_stop from a block hook rolls nothing back), when
 *  - the slice's budget is used up (the next timer deadline), or a callback lowered the budget
 *    to ask for a stop (a device callback must never call uc_emu_stop itself: Unicorn would
 *    replay the access), or
 *  - an interrupt waits for IF = 1 and the block starts with IF = 1 (Unicorn ends a block after
 *    STI's shadow, POPF and IRET, so this is where such an interrupt becomes deliverable).
 * A block stopped before it runs is not charged.
 *
 * Another native block hook (the rep string one) is called from here rather than registered
 * beside it: Unicorn calls a lone block hook directly from translated code, but two through a
 * generic dispatcher that costs more than both hooks (ALU loop: 1000 M/s with either alone,
 * 295 M/s with both registered).  Python passes no chain while paging is on (the rep string
 * hook never acts then). */

#include <stdint.h>

typedef int (*reg_rw_fn)(void *uc, int regid, void *value);
typedef int (*emu_stop_fn)(void *uc);
typedef void (*block_fn)(void *uc, uint64_t address, uint32_t size, void *user);

/* Shared with Python (ctypes Structure in machine/x86/fast_clock.py): keep in step. */
struct icount_state {
    uint64_t counter;             /* charged in this emu_start */
    uint64_t budget;              /* stop at the first block start with counter >= budget */
    reg_rw_fn reg_read;
    emu_stop_fn emu_stop;
    int32_t reg_eflags;
    int32_t if_watch;             /* an interrupt waits for IF = 1 */
    int32_t stopped;              /* why the hook stopped the engine: see STOP_* */
    int32_t unused;
    uint64_t blocks;              /* statistics: blocks charged */
    block_fn chain;               /* another native block hook to run first (or 0) */
    void *chain_user;
};

/* The chained hook only acts on a block holding one rep string instruction: its prefixes (rep,
 * operand and address size, segment) and opcode, at most 5 bytes without redundant prefixes.
 * Calling it for every block costs as much again as this hook. */
#define CHAIN_MAX_SIZE  6

/* The charge of a block is ceil(size / BYTES_PER_INSN), at least 1: x86 code averages about
 * three bytes per instruction.  A constant, so the division is a multiplication (a `div`
 * was a third of this hook's time in a Linux boot). */
#define BYTES_PER_INSN  3
const int icount_bytes_per_insn = BYTES_PER_INSN;

#define STOP_NONE    0
#define STOP_BUDGET  1
#define STOP_IF      2
#define EF_IF        (1u << 9)

/* Everything but charging an ordinary block: a chained hook to call, the budget used up, or the
 * IF watch on.  Kept out of line so that the common path needs no stack frame (a tight loop's
 * block costs about as much as this hook). */
static void __attribute__((noinline)) icount_block_slow(void *uc, uint64_t address, uint32_t size,
                                                       struct icount_state *s)
{
    if (s->chain && size <= CHAIN_MAX_SIZE)
        s->chain(uc, address, size, s->chain_user);
    if (s->counter >= s->budget) {
        s->stopped = STOP_BUDGET;
        s->emu_stop(uc);
        return;
    }
    if (s->if_watch) {
        uint64_t eflags = 0;
        s->reg_read(uc, s->reg_eflags, &eflags);
        if (eflags & EF_IF) {
            s->stopped = STOP_IF;
            s->emu_stop(uc);
            return;
        }
    }
    uint64_t charge = (size + BYTES_PER_INSN - 1) / BYTES_PER_INSN;
    s->counter += charge ? charge : 1;
    s->blocks++;
}

void icount_block(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct icount_state *s = user;
    if (__builtin_expect((s->chain && size <= CHAIN_MAX_SIZE) || s->counter >= s->budget
                         || s->if_watch, 0)) {
        icount_block_slow(uc, address, size, s);
        return;
    }
    uint64_t charge = (size + BYTES_PER_INSN - 1) / BYTES_PER_INSN;
    s->counter += charge ? charge : 1;
    s->blocks++;
}

/* The exact mode's clock, for machine/x86/exact_clock.py.  Unicorn's own counting (emu_start
 * with count > 0) is a code hook before every instruction that calls uc_emu_stop, and it relies
 * on the exit check Unicorn emits after every code hook (and after every load and store: see
 * unicorn_internals.set_access_exit_checks); those checks are a helper call each.  This hook
 * counts the same way, and when nothing else observes single instructions it stops by itself:
 * past the budget it asks for the stop and leaves the translated code at once through
 * Unicorn's cpu_loop_exit_restore, with the host return address into the block, so the CPU
 * state is put back to the start of this instruction (not run, not counted), and the code is
 * translated without the checks: an instruction costs one call.  Registered as the only code
 * hook, Unicorn calls it directly from translated code, which the restore needs.
 * While breakpoints or other code hooks observe instructions (they stop through uc_emu_stop
 * and the checks, and Unicorn calls this hook through its dispatcher, from outside the block),
 * `loop_exit_restore` is 0: the hook only asks for the stop, and the check right after the code
 * hooks leaves the block before the instruction, as with Unicorn's own counting hook. */
typedef void (*loop_exit_restore_fn)(void *cpu, uintptr_t host_pc);

/* Shared with Python (ctypes Structure in machine/x86/exact_clock.py): keep in step. */
struct insn_state {
    uint64_t counter;             /* instructions retired in this emu_start */
    uint64_t budget;              /* stop before an instruction when counter >= budget */
    emu_stop_fn emu_stop;
    void *cpu;                    /* uc->cpu */
    loop_exit_restore_fn loop_exit_restore;   /* 0: code with the exit checks */
    int32_t stopped;              /* STOP_BUDGET when this hook ended the run */
    int32_t unused;
};

void __attribute__((noinline)) icount_insn(void *uc, uint64_t address, uint32_t size, void *user)
{
    (void)address;
    (void)size;
    struct insn_state *s = user;
    if (__builtin_expect(s->counter >= s->budget, 0)) {
        s->stopped = STOP_BUDGET;
        s->emu_stop(uc);
        if (!s->loop_exit_restore)
            return;
        s->loop_exit_restore(s->cpu, (uintptr_t)__builtin_return_address(0));
    }
    s->counter++;
}

/* RDTSC from virtual time, for machine/x86/tsc.py, in both modes: a Python hook costs a few
 * microseconds per RDTSC, and Linux spins on the TSC in its delay loops (over ten million RDTSC
 * in one boot).  The time stamp is the slice's start plus its port I/O time (`base`, kept by
 * Python) plus the instructions retired so far (`*counter`: Unicorn's counter in the exact
 * mode, the fast clock's in the fast mode).  In the fast mode an RDTSC also charges the clock
 * its latency (`charge`, see machine/x86/tsc.py); the exact mode charges it one instruction. */
struct tsc_state {
    uint64_t base;
    uint64_t *counter;
    reg_rw_fn reg_write;
    int32_t reg_rax, reg_rdx;
    uint64_t reads;               /* statistics: RDTSC executed */
    uint64_t charge;              /* added to *counter after each read: the fast mode's cost of
                                     an RDTSC (0 in the exact mode: one instruction, one ns) */
};

uint32_t icount_rdtsc(void *uc, void *user)
{
    struct tsc_state *s = user;
    uint64_t tsc = s->base + *s->counter;
    uint64_t lo = tsc & 0xffffffffu, hi = tsc >> 32;
    s->reg_write(uc, s->reg_rax, &lo);
    s->reg_write(uc, s->reg_rdx, &hi);
    s->reads++;
    *s->counter += s->charge;
    return 1;                     /* skip the native instruction (the host's TSC) */
}
