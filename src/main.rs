//! The `stripe-inbox` binary: a thin shell around [`stripe_inbox::cli::run`].

use std::process::ExitCode;

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
