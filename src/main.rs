//! The `mde-offboard` binary: sets how the process's allocator hands memory back, then runs the command
//! line ([`mde_offboard::cli::main`]).

fn main() -> std::process::ExitCode {
    return_large_buffers_when_freed();
    std::process::ExitCode::from(mde_offboard::cli::main())
}

/// Allocations from this size up get pages of their own, given back to the system when freed: glibc's own
/// starting threshold, kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Keeps large buffers (an inventory page of 6 MB and its parse, a sorter's 4 MiB) out of the allocator's
/// arenas, and the arenas few, so that memory flat in the heap is flat in RSS too.
///
/// glibc starts by giving every allocation of 128 KiB or more pages of its own, but the first time such a
/// buffer is freed it raises that threshold to the buffer's size (up to 32 MiB): from then on the large
/// buffers come from its arenas, one per thread that allocates (the runtime's workers, the blocking
/// threads, the sync thread), and what they free stays in each arena for that arena's reuse. With the work
/// moving between threads, each arena kept its own copy of the largest buffers: at a million rows with the
/// pre-flight, RSS was 15 MiB above the heap (BENCHMARKS.md, figure 3). Fixing the threshold at its starting
/// value stops that; the calls of a run allocate nothing this large, so they make no more system calls.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_when_freed() {
    // SAFETY: mallopt sets one of the allocator's parameters, under the allocator's own lock; it is called
    // first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    // And as many arenas as cores (glibc's default is 8 per core): each arena keeps its own high-water mark,
    // and a run of many tenants allocates on many threads (each tenant's reader and scan on a blocking thread
    // of its own). 100 tenants of 1,500 at once: 93 -> 70 MiB (BENCHMARKS.md, figure 7). Not one: the
    // runtime's worker would share it with the blocking threads reading the list (with the pre-flight, half
    // as many lock waits again, for 1.3 MiB less at 100 tenants).
    let arenas = std::thread::available_parallelism().map_or(1, usize::from);
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_when_freed() {}
