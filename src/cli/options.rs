//! The one options parser every subcommand uses: `--config PATH` (`-c`) and `--help` (`-h`), which
//! every command takes, plus the command's own options and positional arguments. Built on
//! `lexopt` (correct `--opt=value` / `--opt value` handling, and paths that are not UTF-8).

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Config;
use crate::error::{Error, Result};

/// One option of a command: its long name, its short letter (`None` for none), and whether it
/// takes a value (a flag is recorded with the value `"true"`).
pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    pub value: bool,
}

/// A flag: `--name`.
pub const fn flag(long: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: false,
    }
}

/// An option with a value: `--name VALUE`.
pub const fn valued(long: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: true,
    }
}

/// What a command was given.
pub struct Options {
    /// `--config`, else `$STRIPE_INBOX_CONFIG`, else `./stripe-inbox.toml`.
    pub config: PathBuf,
    values: Vec<(&'static str, String)>,
    /// The positional arguments, in order.
    pub args: Vec<OsString>,
    /// `stripe-inbox <command> --help`, for usage errors.
    hint: String,
}

impl Options {
    /// The last value of option `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of option `name`, in order (for options that may repeat).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.values
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A usage error for this command, with its `--help` as the hint.
    pub fn usage(&self, msg: impl Into<String>) -> Error {
        Error::usage(msg, self.hint.clone())
    }

    /// Loads the config file.
    pub fn load_config(&self) -> Result<Config> {
        Config::load(&self.config)
    }
}

/// Parses the arguments after the command name. `help` is the command's usage text (its first
/// line names the command); `own` its options; at most `max_args` positional arguments are taken.
/// Returns `Ok(None)` after printing the help.
pub fn parse(
    mut parser: lexopt::Parser,
    help: &str,
    own: &[Opt],
    max_args: usize,
) -> Result<Option<Options>> {
    let command = help.split_whitespace().nth(2).unwrap_or("");
    let hint = format!("stripe-inbox {command} --help");
    let usage = |e: lexopt::Error| Error::usage(e.to_string(), hint.clone());
    let mut config = None;
    let mut values = Vec::new();
    let mut args = Vec::new();
    while let Some(arg) = parser.next().map_err(usage)? {
        let found = match &arg {
            Long("config") | Short('c') => Some(("config", true)),
            Long("help") | Short('h') => {
                print!("{help}");
                return Ok(None);
            }
            Long(long) => own
                .iter()
                .find(|o| o.long == *long)
                .map(|o| (o.long, o.value)),
            Short(short) => own
                .iter()
                .find(|o| o.short == Some(*short))
                .map(|o| (o.long, o.value)),
            Value(_) => None,
        };
        let Some((name, takes_value)) = found else {
            match arg {
                Value(v) if args.len() < max_args => {
                    args.push(v);
                    continue;
                }
                other => return Err(Error::usage(other.unexpected().to_string(), hint)),
            }
        };
        if !takes_value {
            values.push((name, "true".to_string()));
            continue;
        }
        let value = parser.value().map_err(usage)?;
        if name == "config" {
            config = Some(PathBuf::from(value));
        } else {
            values.push((name, value.string().map_err(usage)?));
        }
    }
    Ok(Some(Options {
        config: Config::locate(config),
        values,
        args,
        hint,
    }))
}
