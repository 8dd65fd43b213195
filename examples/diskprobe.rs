//! What does this disk give a commit? Writes commit-sized pieces (28 KB by default, what a
//! one-event commit writes to the WAL) into a 32 MiB file in place, each followed by `fdatasync`,
//! at a fixed rate, and prints their latency: alone, or beside a second thread that writes to
//! another file the way the checkpointer writes the database back (in bursts every 250 ms, each
//! 1 MiB piece followed by `fdatasync`), either in sequence or as scattered 4 KiB pages.
//!
//! ```text
//! cargo run --release --example diskprobe -- DIR [--rate 3000] [--secs 8] [--commit-bytes 28672]
//!     [--beside none|sequential|scattered] [--beside-mb-per-s 28] [--rounds 2]
//! ```
//!
//! DIR must be on the disk to measure (the database's); the probe writes about 300 MiB there
//! and removes it. `--rounds N` repeats every mode N times, alternating, so that a noisy host shows
//! as spread rather than as a difference. With the defaults this answers: how much of a commit's
//! tail is the disk's own, and how much the database writes beside it add (README, "Performance").

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: diskprobe DIR [--rate 3000] [--secs 8] [--commit-bytes 28672] \
                     [--beside none|sequential|scattered] [--beside-mb-per-s 28] [--rounds 2]";
const WAL_BYTES: u64 = 32 << 20;
const BESIDE_FILE_BYTES: u64 = 256 << 20;
const PIECE: usize = 1 << 20;
const PAGE: usize = 4096;
const BURST_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Beside {
    None,
    Sequential,
    Scattered,
}

struct Options {
    dir: PathBuf,
    rate: u64,
    secs: u64,
    commit_bytes: usize,
    beside: Vec<Beside>,
    beside_mb: f64,
    rounds: u32,
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let work = options
        .dir
        .join(format!("diskprobe-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&work) {
        eprintln!("create {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    let result = run(&options, &work);
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diskprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        dir: PathBuf::new(),
        rate: 3000,
        secs: 8,
        commit_bytes: 28 << 10,
        beside: vec![Beside::None, Beside::Sequential, Beside::Scattered],
        beside_mb: 28.0,
        rounds: 2,
    };
    let mut dir = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--rate" => options.rate = number(&value("--rate")?)?,
            "--secs" => options.secs = number(&value("--secs")?)?,
            "--commit-bytes" => options.commit_bytes = number(&value("--commit-bytes")?)?,
            "--beside-mb-per-s" => {
                options.beside_mb = value("--beside-mb-per-s")?
                    .parse()
                    .map_err(|_| "--beside-mb-per-s needs a number".to_string())?
            }
            "--rounds" => options.rounds = number(&value("--rounds")?)?,
            "--beside" => {
                options.beside = vec![match value("--beside")?.as_str() {
                    "none" => Beside::None,
                    "sequential" => Beside::Sequential,
                    "scattered" => Beside::Scattered,
                    other => return Err(format!("unknown --beside {other:?}")),
                }]
            }
            "-h" | "--help" => return Err("diskprobe: commit latency on this disk".into()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other => dir = Some(PathBuf::from(other)),
        }
    }
    options.dir = dir.ok_or("DIR is required")?;
    if options.rate == 0 || options.secs == 0 || options.rounds == 0 {
        return Err("--rate, --secs and --rounds must be above zero".into());
    }
    if options.commit_bytes == 0 || options.commit_bytes as u64 >= WAL_BYTES {
        return Err(format!("--commit-bytes must be between 1 and {WAL_BYTES}"));
    }
    if !options.beside_mb.is_finite() || options.beside_mb <= 0.0 {
        return Err("--beside-mb-per-s must be above zero".into());
    }
    Ok(options)
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("not a number: {text:?}"))
}

fn run(options: &Options, work: &Path) -> Result<(), String> {
    let wal = open(&work.join("wal"))?;
    // Written once and synced, so that the probe overwrites allocated blocks, as the WAL does
    // after its first cycle.
    let fill = pattern(PIECE, 1);
    for offset in (0..WAL_BYTES).step_by(PIECE) {
        wal.write_all_at(&fill, offset)
            .map_err(io("fill the WAL file"))?;
    }
    wal.sync_all().map_err(io("sync the WAL file"))?;
    if options.beside.iter().any(|&b| b != Beside::None) {
        // Allocated too: a database file's pages are rewritten in place.
        let db = open(&work.join("db"))?;
        for offset in (0..BESIDE_FILE_BYTES).step_by(PIECE) {
            db.write_all_at(&fill, offset)
                .map_err(io("fill the file beside"))?;
        }
        db.sync_all().map_err(io("sync the file beside"))?;
    }
    println!(
        "{} B + fdatasync at {}/s for {} s; beside: {} MB/s in bursts every {} ms",
        options.commit_bytes,
        options.rate,
        options.secs,
        options.beside_mb,
        BURST_EVERY.as_millis()
    );
    for round in 1..=options.rounds {
        for &beside in &options.beside {
            let latencies = probe(options, &wal, work, beside)?;
            print_round(round, beside, &latencies);
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Bytes that do not compress, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn probe(options: &Options, wal: &File, work: &Path, beside: Beside) -> Result<Vec<u32>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = if beside == Beside::None {
        None
    } else {
        let file = open(&work.join("db"))?;
        let stop = stop.clone();
        let per_burst = (options.beside_mb * 1e6 * BURST_EVERY.as_secs_f64()) as usize;
        Some(thread::spawn(move || {
            write_beside(&file, beside, per_burst, &stop)
        }))
    };
    let piece = pattern(options.commit_bytes, 2);
    let total = options.rate * options.secs;
    let interval = Duration::from_secs(1).as_secs_f64() / options.rate as f64;
    let mut latencies = Vec::with_capacity(total as usize);
    let mut offset = 0u64;
    let started = Instant::now();
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 * interval);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let began = Instant::now();
        wal.write_all_at(&piece, offset).map_err(io("write"))?;
        wal.sync_data().map_err(io("fdatasync"))?;
        latencies.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32);
        offset += piece.len() as u64;
        if offset + piece.len() as u64 > WAL_BYTES {
            offset = 0;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        writer
            .join()
            .map_err(|_| "the writer beside panicked".to_string())??;
    }
    Ok(latencies)
}

/// Every [`BURST_EVERY`], writes `per_burst` bytes to `file` in 1 MiB pieces, each followed by
/// `fdatasync`: as one piece, or as 4 KiB pages at scattered offsets.
fn write_beside(
    file: &File,
    beside: Beside,
    per_burst: usize,
    stop: &AtomicBool,
) -> Result<(), String> {
    let piece = pattern(PIECE, 3);
    let pages = (BESIDE_FILE_BYTES / PAGE as u64).max(1);
    let mut next_page = 0x2545_f491_4f6c_dd1d_u64;
    let mut sequential = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut left = per_burst.max(PAGE);
        while left > 0 && !stop.load(Ordering::Relaxed) {
            let len = left.min(PIECE);
            match beside {
                Beside::Sequential => {
                    file.write_all_at(&piece[..len], sequential)
                        .map_err(io("write beside"))?;
                    sequential = (sequential + len as u64) % BESIDE_FILE_BYTES;
                }
                _ => {
                    for page in piece[..len].chunks(PAGE) {
                        next_page ^= next_page << 13;
                        next_page ^= next_page >> 7;
                        next_page ^= next_page << 17;
                        let at = (next_page % pages) * PAGE as u64;
                        file.write_all_at(page, at).map_err(io("write beside"))?;
                    }
                }
            }
            file.sync_data().map_err(io("fdatasync beside"))?;
            left -= len;
        }
        next += BURST_EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    Ok(())
}

fn print_round(round: u32, beside: Beside, latencies: &[u32]) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64;
    let ms = |us: f64| us / 1000.0;
    println!(
        "round {round} beside {:<10} {} commits: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
        format!("{beside:?}").to_lowercase(),
        sorted.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(0.999)),
        ms(*sorted.last().unwrap_or(&0) as f64),
    );
}
