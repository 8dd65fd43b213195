//! The `stripe-inbox` binary: a thin shell around [`stripe_inbox::cli::run`].

use std::process::ExitCode;

/// jemalloc with small thread caches and two arenas. One thread serves each connection, and a
/// malloc's per-thread cache of freed blocks is kept in every one of them: glibc's (only the
/// `GLIBC_TUNABLES` environment variable turns it off, read before `main` runs) held about 6 MiB
/// with 256 open connections, jemalloc's default one 27 MiB (peak RSS 55 MiB against 28). With no
/// thread cache at all, though, every allocation takes an arena lock: 15% of the writer's time in
/// a same-second burst went to allocating, 9.5% of it in `pthread_mutex_*`. So each thread keeps
/// at most 8 freed blocks per size class up to 1 KiB (a parsed JSON object's map nodes are 640
/// and 768 bytes) and one of each larger class: the writer allocates without a lock nearly always,
/// and 256 idle connection threads hold little.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start (`_rjem_` is the crate's prefix); the
/// `_RJEM_MALLOC_CONF` environment variable, read after it, can override them.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:2,background_thread:false,tcache:true,tcache_max:1024,\
tcache_nslots_small_max:8,tcache_nslots_large:1\0";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match stripe_inbox::cli::run(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            if let Some(hint) = err.hint() {
                eprintln!("try: {hint}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}
